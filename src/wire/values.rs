//! The wire text of column values (SPEC §3), for the types whose text differs from PostgreSQL's
//! own output, or that are written here faster than by it: booleans, floats, numerics,
//! timestamps, dates and bytea.
//!
//! Pure Rust: callers pass the raw value (microseconds or days since 2000-01-01, as PostgreSQL
//! stores them). `None` means "leave the field out": a value the field's XSD type cannot
//! represent, such as an infinite timestamp, is omitted like a NULL.

use base64::Engine;

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const UNIX_TO_PG_EPOCH_DAYS: i64 = 10_957;

/// `xsd:boolean`.
pub fn boolean(value: bool) -> &'static str {
    if value {
        "true"
    } else {
        "false"
    }
}

/// `xsd:double` from a `double precision`: shortest round-trip digits, `INF`, `-INF`, `NaN`.
pub fn double(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "INF".into()
        } else {
            "-INF".into()
        }
    } else if value == 0.0 || (1e-7..1e16).contains(&value.abs()) {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
}

/// `xsd:double` from a `real`: its own shortest round-trip digits, not those of its f64 widening.
pub fn real(value: f32) -> String {
    if value.is_finite() && value != 0.0 && !(1e-7..1e16).contains(&value.abs()) {
        format!("{value:e}")
    } else if value.is_finite() {
        format!("{value}")
    } else {
        double(f64::from(value))
    }
}

/// `xsd:decimal` from `numeric`'s text output; NaN and infinities have no decimal form.
pub fn numeric(text: &str) -> Option<&str> {
    match text {
        "NaN" | "Infinity" | "-Infinity" => None,
        _ => Some(text),
    }
}

/// A finite `numeric` as PostgreSQL stores it: base-10000 digits (`digits`, native-endian
/// 16-bit words), the first of weight `weight` (its value times 10000^weight), and `dscale`
/// decimal places to show.
pub struct Decimal<'a> {
    pub negative: bool,
    pub weight: i32,
    pub dscale: u32,
    pub digits: &'a [u8],
}

impl Decimal<'_> {
    /// The base-10000 digit of weight `weight` (0 where none is stored).
    fn digit(&self, weight: i32) -> u16 {
        let Ok(index) = usize::try_from(self.weight - weight) else {
            return 0;
        };
        match self.digits.get(2 * index..2 * index + 2) {
            Some(&[first, second]) => u16::from_ne_bytes([first, second]),
            _ => 0,
        }
    }
}

/// `xsd:decimal` from a finite `numeric`: the same text as PostgreSQL's `numeric_out`.
pub fn write_decimal(out: &mut String, value: &Decimal) {
    if value.negative {
        out.push('-');
    }
    // The integer part: its first digit without leading zeros, the rest with theirs.
    if value.weight < 0 {
        out.push('0');
    } else {
        let mut integer = itoa::Buffer::new();
        out.push_str(integer.format(value.digit(value.weight)));
        for weight in (0..value.weight).rev() {
            push_four_digits(out, value.digit(weight));
        }
    }
    if value.dscale == 0 {
        return;
    }
    out.push('.');
    let end = out.len() + value.dscale as usize;
    let mut weight = -1;
    while out.len() < end {
        push_four_digits(out, value.digit(weight));
        weight -= 1;
    }
    out.truncate(end);
}

/// Appends a base-10000 digit as four decimal digits.
fn push_four_digits(out: &mut String, digit: u16) {
    for place in [1000, 100, 10, 1] {
        out.push(char::from(b'0' + (digit / place % 10) as u8));
    }
}

/// `xsd:dateTime` in UTC (`...Z`) from a `timestamptz`; `None` for ±infinity.
pub fn timestamptz(micros: i64) -> Option<String> {
    let mut text = String::with_capacity(24);
    write_timestamp(&mut text, micros, true).then_some(text)
}

/// `xsd:dateTime` without zone, millisecond precision, from a `timestamp`; `None` for ±infinity.
#[cfg(test)]
pub fn timestamp(micros: i64) -> Option<String> {
    let mut text = String::with_capacity(24);
    write_timestamp(&mut text, micros, false).then_some(text)
}

/// `xsd:date` from a `date` (days since 2000-01-01); `None` for ±infinity.
#[cfg(test)]
pub fn date(days: i32) -> Option<String> {
    let mut text = String::with_capacity(10);
    write_date(&mut text, days).then_some(text)
}

/// Appends [`timestamp`] (with `Z` when `utc`); false, appending nothing, for ±infinity.
pub fn write_timestamp(out: &mut String, micros: i64, utc: bool) -> bool {
    if micros == i64::MAX || micros == i64::MIN {
        return false;
    }
    let days = micros.div_euclid(MICROS_PER_DAY);
    let millis = micros.rem_euclid(MICROS_PER_DAY) / 1000;
    let (year, month, day) = civil_from_unix_days(days + UNIX_TO_PG_EPOCH_DAYS);
    if (1..=9999).contains(&year) {
        // The common case in one piece: a capture writes a timestamp per row and column, and
        // pushing it a character and a number at a time costs more than the rest of it.
        let mut text = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut text[0..4], year as u32);
        put_digits(&mut text[5..7], month);
        put_digits(&mut text[8..10], day);
        let millis = millis as u32;
        put_digits(&mut text[11..13], millis / 3_600_000);
        put_digits(&mut text[14..16], millis / 60_000 % 60);
        put_digits(&mut text[17..19], millis / 1000 % 60);
        put_digits(&mut text[20..23], millis % 1000);
        let length = if utc { text.len() } else { text.len() - 1 };
        // SAFETY: ASCII digits and separators only.
        out.push_str(unsafe { std::str::from_utf8_unchecked(&text[..length]) });
        return true;
    }
    write_civil_date(out, days);
    out.push('T');
    push_digits(out, millis / 3_600_000, 2);
    out.push(':');
    push_digits(out, millis / 60_000 % 60, 2);
    out.push(':');
    push_digits(out, millis / 1000 % 60, 2);
    out.push('.');
    push_digits(out, millis % 1000, 3);
    if utc {
        out.push('Z');
    }
    true
}

/// Appends [`date`]; false, appending nothing, for ±infinity.
pub fn write_date(out: &mut String, days: i32) -> bool {
    if days == i32::MAX || days == i32::MIN {
        return false;
    }
    write_civil_date(out, i64::from(days));
    true
}

/// Writes `value` in decimal into all of `digits`, with leading zeros (its last digits only,
/// when it has more).
fn put_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Appends a non-negative number with at least `width` digits.
fn push_digits(out: &mut String, value: i64, width: usize) {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// `xsd:base64Binary` from `bytea`.
#[cfg(test)]
pub fn bytea(bytes: &[u8]) -> String {
    let mut text = String::new();
    write_bytea(&mut text, bytes);
    text
}

/// Appends [`bytea`].
pub fn write_bytea(out: &mut String, bytes: &[u8]) {
    base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
}

/// Appends `YYYY-MM-DD` of a day counted from 2000-01-01 in the proleptic Gregorian calendar.
/// Years before 1 are written as XSD 1.0 does: 1 BC is `-0001`.
fn write_civil_date(out: &mut String, pg_days: i64) {
    let (year, month, day) = civil_from_unix_days(pg_days + UNIX_TO_PG_EPOCH_DAYS);
    if year <= 0 {
        out.push('-');
        push_digits(out, 1 - year, 4);
    } else {
        push_digits(out, year, 4);
    }
    out.push('-');
    push_digits(out, i64::from(month), 2);
    out.push('-');
    push_digits(out, i64::from(day), 2);
}

/// Year, month, day of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_unix_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of a numeric given as its base-10000 digits.
    fn decimal(negative: bool, weight: i32, dscale: u32, digits: &[u16]) -> String {
        let bytes: Vec<u8> = digits.iter().flat_map(|d| d.to_ne_bytes()).collect();
        let mut out = String::new();
        let value = Decimal {
            negative,
            weight,
            dscale,
            digits: &bytes,
        };
        write_decimal(&mut out, &value);
        out
    }

    #[test]
    fn decimals_are_written_as_numeric_out_writes_them() {
        assert_eq!(decimal(false, 0, 0, &[]), "0");
        assert_eq!(decimal(false, 0, 2, &[]), "0.00");
        assert_eq!(decimal(false, 0, 0, &[7]), "7");
        assert_eq!(decimal(true, 0, 1, &[7, 5000]), "-7.5");
        // 12345678.9 is 1234 5678 . 9000 with weight 1.
        assert_eq!(decimal(false, 1, 1, &[1234, 5678, 9000]), "12345678.9");
        // Trailing zero digits are not stored: 10000 is one digit of weight 1.
        assert_eq!(decimal(false, 1, 0, &[1]), "10000");
        assert_eq!(decimal(false, 2, 3, &[42]), "4200000000.000");
        // 0.00012 is 0001 2000 after the point: weights -1 and -2.
        assert_eq!(decimal(false, -1, 5, &[1, 2000]), "0.00012");
        // 0.000012 leaves weight -1 all zeros, not stored.
        assert_eq!(decimal(false, -2, 8, &[1200]), "0.00001200");
        assert_eq!(decimal(true, -1, 4, &[5]), "-0.0005");
        assert_eq!(decimal(false, 0, 6, &[3, 1415, 9265]), "3.141592");
    }

    const DAY: i64 = MICROS_PER_DAY;

    #[test]
    fn timestamps_have_millisecond_precision() {
        assert_eq!(timestamp(0).unwrap(), "2000-01-01T00:00:00.000");
        assert_eq!(timestamptz(1_234_567).unwrap(), "2000-01-01T00:00:01.234Z");
        assert_eq!(timestamp(-1).unwrap(), "1999-12-31T23:59:59.999");
        // 2024-02-29 12:34:56.789 is 8825 days after 2000-01-01.
        let leap = 8825 * DAY + ((12 * 60 + 34) * 60 + 56) * 1_000_000 + 789_000;
        assert_eq!(timestamptz(leap).unwrap(), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn timestamps_outside_years_1_to_9999_are_written_too() {
        // 0001-01-01 is 730,119 days before 2000-01-01; the microsecond before it is in 1 BC.
        assert_eq!(
            timestamp(-730_119 * DAY).unwrap(),
            "0001-01-01T00:00:00.000"
        );
        assert_eq!(
            timestamptz(-730_119 * DAY - 1).unwrap(),
            "-0001-12-31T23:59:59.999Z"
        );
        // 10000-01-01 is 2,921,940 days (twenty 400-year cycles) after 2000-01-01.
        assert_eq!(
            timestamp(2_921_940 * DAY).unwrap(),
            "10000-01-01T00:00:00.000"
        );
        assert_eq!(
            timestamptz(2_921_940 * DAY - 1).unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn infinite_values_are_left_out() {
        assert_eq!(timestamp(i64::MAX), None);
        assert_eq!(timestamptz(i64::MIN), None);
        assert_eq!(date(i32::MAX), None);
        assert_eq!(numeric("NaN"), None);
        assert_eq!(numeric("-Infinity"), None);
        assert_eq!(numeric("-12.50"), Some("-12.50"));
    }

    #[test]
    fn dates_across_eras() {
        assert_eq!(date(0).unwrap(), "2000-01-01");
        assert_eq!(date(-10_957).unwrap(), "1970-01-01");
        assert_eq!(date(59).unwrap(), "2000-02-29");
        // 0001-01-01 and the day before it, 1 BC December 31.
        assert_eq!(date(-730_119).unwrap(), "0001-01-01");
        assert_eq!(date(-730_120).unwrap(), "-0001-12-31");
    }

    #[test]
    fn floats_use_xsd_special_values() {
        assert_eq!(double(f64::INFINITY), "INF");
        assert_eq!(double(f64::NEG_INFINITY), "-INF");
        assert_eq!(double(f64::NAN), "NaN");
        assert_eq!(double(1.5), "1.5");
        assert_eq!(double(0.1), "0.1");
        assert_eq!(double(1e300), "1e300");
        assert_eq!(double(-2.5e-10), "-2.5e-10");
        assert_eq!(real(0.1f32), "0.1");
        assert_eq!(real(f32::NEG_INFINITY), "-INF");
    }

    #[test]
    fn bytea_is_base64() {
        assert_eq!(bytea(b"\x00\xffhi"), "AP9oaQ==");
        assert_eq!(bytea(b""), "");
        assert_eq!(boolean(true), "true");
    }
}
