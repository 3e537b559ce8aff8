//! The wire text of one column value (SPEC §3): decodes a datum by its type and hands the raw
//! value to [`crate::wire::values`]. Types without a special rule go through their output function.

use std::borrow::Cow;
use std::ffi::CStr;

use pgrx::{pg_sys, FromDatum};

use crate::wire::soap::push_escaped;
use crate::wire::values;

/// How values of one column type become wire text, resolved once (per statement, by capture):
/// the base type's rule, and for types without one their output function, looked up once.
pub struct Encoder {
    kind: Kind,
}

enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric(Output),
    Timestamp,
    TimestampTz,
    Date,
    Bytea,
    /// Text-like types of a UTF-8 database: their bytes are the wire text.
    Text,
    Other(Output),
}

/// A type's output function, with its lookup done. Whatever the function keeps between calls
/// lives in a memory context of its own, freed with it.
struct Output {
    info: Box<pg_sys::FmgrInfo>,
    memory: pg_sys::MemoryContext,
}

impl Output {
    fn for_type(typoid: pg_sys::Oid) -> Output {
        let mut function = pg_sys::InvalidOid;
        let mut is_varlena = false;
        // SAFETY: a zeroed FmgrInfo filled in by fmgr_info_cxt, in a new context under
        // CacheMemoryContext that lives until this Output is dropped.
        unsafe {
            pg_sys::getTypeOutputInfo(typoid, &mut function, &mut is_varlena);
            let memory = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CacheMemoryContext,
                c"outbound_msg output function".as_ptr(),
                pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
                pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
                pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
            );
            let mut info: Box<pg_sys::FmgrInfo> = Box::new(std::mem::zeroed());
            pg_sys::fmgr_info_cxt(function, info.as_mut(), memory);
            Output { info, memory }
        }
    }

    /// Runs `f` on the value's text output.
    ///
    /// # Safety
    /// `datum` must be a non-NULL value of the type.
    unsafe fn with_text<R>(&self, datum: pg_sys::Datum, f: impl FnOnce(Cow<'_, str>) -> R) -> R {
        // SAFETY: calls the type's output function, which returns a palloc'd C string.
        unsafe {
            let info = &*self.info as *const pg_sys::FmgrInfo as *mut pg_sys::FmgrInfo;
            let cstring = pg_sys::OutputFunctionCall(info, datum);
            let result = f(CStr::from_ptr(cstring).to_string_lossy());
            pg_sys::pfree(cstring.cast());
            result
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // SAFETY: the context was created for this Output and nothing else refers to it.
        unsafe { pg_sys::MemoryContextDelete(self.memory) }
    }
}

impl Encoder {
    /// The encoder for values of type `typoid` (a domain encodes as its base type).
    pub fn for_type(typoid: pg_sys::Oid) -> Encoder {
        // SAFETY: catalog lookups.
        let (base, utf8) = unsafe {
            (
                pg_sys::getBaseType(typoid),
                pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32,
            )
        };
        let kind = match base {
            pg_sys::BOOLOID => Kind::Bool,
            pg_sys::INT2OID => Kind::Int2,
            pg_sys::INT4OID => Kind::Int4,
            pg_sys::INT8OID => Kind::Int8,
            pg_sys::FLOAT4OID => Kind::Float4,
            pg_sys::FLOAT8OID => Kind::Float8,
            pg_sys::NUMERICOID => Kind::Numeric(Output::for_type(base)),
            pg_sys::TIMESTAMPTZOID => Kind::TimestampTz,
            pg_sys::TIMESTAMPOID => Kind::Timestamp,
            pg_sys::DATEOID => Kind::Date,
            pg_sys::BYTEAOID => Kind::Bytea,
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID if utf8 => Kind::Text,
            _ => Kind::Other(Output::for_type(base)),
        };
        Encoder { kind }
    }

    /// Appends the text a value is sent as, XML-escaped when `escape`; false, appending
    /// nothing, when the field is left out (a value its XSD type cannot represent; an SQL NULL
    /// is the caller's to skip).
    ///
    /// # Safety
    /// `datum` must be a non-NULL value of the encoder's type, valid for the current memory
    /// context.
    pub unsafe fn write(&self, datum: pg_sys::Datum, out: &mut String, escape: bool) -> bool {
        let mut integer = itoa::Buffer::new();
        // SAFETY (all arms): the caller guarantees `datum` is a non-NULL value of the type.
        unsafe {
            match &self.kind {
                Kind::Bool => out.push_str(values::boolean(datum.value() != 0)),
                Kind::Int2 => out.push_str(integer.format(datum.value() as i16)),
                Kind::Int4 => out.push_str(integer.format(datum.value() as i32)),
                Kind::Int8 => out.push_str(integer.format(datum.value() as i64)),
                Kind::Float4 => match f32::from_datum(datum, false) {
                    Some(v) => out.push_str(&values::real(v)),
                    None => return false,
                },
                Kind::Float8 => match f64::from_datum(datum, false) {
                    Some(v) => out.push_str(&values::double(v)),
                    None => return false,
                },
                Kind::Numeric(output) => match stored_numeric(datum) {
                    Some(Numeric::Finite(value)) => values::write_decimal(out, &value),
                    Some(Numeric::Special) => return false,
                    None => {
                        return output.with_text(datum, |text| match values::numeric(&text) {
                            Some(text) => {
                                out.push_str(text);
                                true
                            }
                            None => false,
                        })
                    }
                },
                Kind::TimestampTz => {
                    return values::write_timestamp(out, datum.value() as i64, true)
                }
                Kind::Timestamp => {
                    return values::write_timestamp(out, datum.value() as i64, false)
                }
                Kind::Date => return values::write_date(out, datum.value() as i32),
                Kind::Bytea => match <&[u8]>::from_datum(datum, false) {
                    Some(bytes) => values::write_bytea(out, bytes),
                    None => return false,
                },
                Kind::Text => match stored_text(datum).or_else(|| <&str>::from_datum(datum, false))
                {
                    Some(text) => push(out, text, escape),
                    None => return false,
                },
                Kind::Other(output) => output.with_text(datum, |text| push(out, &text, escape)),
            }
        }
        true
    }
}

/// The bytes of a varlena datum stored as it is (neither compressed nor out of line), read in
/// place; `None` for any other.
///
/// # Safety
/// `datum` must be a non-NULL varlena datum.
unsafe fn stored_bytes<'a>(datum: pg_sys::Datum) -> Option<&'a [u8]> {
    let varlena = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: as the caller guarantees; only a value stored in place is read, within its size.
    unsafe {
        if pgrx::varlena::varatt_is_1b_e(varlena) || pgrx::varlena::varatt_is_4b_c(varlena) {
            return None;
        }
        Some(pgrx::varlena::varlena_to_byte_slice(varlena))
    }
}

/// The text of a `text` datum of a UTF-8 database (the only one [`Kind::Text`] is chosen for)
/// stored as it is, read in place; `None` for any other (detoasted by pgrx instead). pgrx's own
/// path makes a guarded call per value even when there is nothing to detoast.
///
/// # Safety
/// `datum` must be a non-NULL `text` (or other varlena) datum.
unsafe fn stored_text<'a>(datum: pg_sys::Datum) -> Option<&'a str> {
    // SAFETY: as the caller guarantees.
    let bytes = unsafe { stored_bytes(datum) }?;
    // Most values are ASCII, which a short test shows; std's full UTF-8 validation costs
    // more than the value's own rendering.
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// A `numeric` value as stored.
enum Numeric<'a> {
    Finite(values::Decimal<'a>),
    /// NaN or an infinity: no `xsd:decimal` represents it.
    Special,
}

/// A `numeric` datum stored as it is (neither compressed nor out of line), read in place
/// (numeric's on-disk layout, utils/adt/numeric.c); `None` for any other, written by
/// `numeric_out` instead. The output function would first copy a value stored with a short
/// header, then build a digit array and a C string from it.
///
/// # Safety
/// `datum` must be a non-NULL `numeric` datum.
unsafe fn stored_numeric<'a>(datum: pg_sys::Datum) -> Option<Numeric<'a>> {
    const SIGN_MASK: u16 = 0xC000;
    const NEGATIVE: u16 = 0x4000;
    const SHORT: u16 = 0x8000;
    const SPECIAL: u16 = 0xC000;
    const SHORT_NEGATIVE: u16 = 0x2000;
    const SHORT_DSCALE_MASK: u16 = 0x1F80;
    const SHORT_DSCALE_SHIFT: u16 = 7;
    const SHORT_WEIGHT_NEGATIVE: u16 = 0x0040;
    const SHORT_WEIGHT_MASK: u16 = 0x003F;
    const DSCALE_MASK: u16 = 0x3FFF;
    // SAFETY: as the caller guarantees.
    let data = unsafe { stored_bytes(datum) }?;
    let word = |at: usize| Some(u16::from_ne_bytes([*data.get(at)?, *data.get(at + 1)?]));
    let header = word(0)?;
    Some(match header & SIGN_MASK {
        SPECIAL => Numeric::Special,
        SHORT => {
            let magnitude = i32::from(header & SHORT_WEIGHT_MASK);
            Numeric::Finite(values::Decimal {
                negative: header & SHORT_NEGATIVE != 0,
                weight: if header & SHORT_WEIGHT_NEGATIVE != 0 {
                    magnitude | !i32::from(SHORT_WEIGHT_MASK)
                } else {
                    magnitude
                },
                dscale: u32::from((header & SHORT_DSCALE_MASK) >> SHORT_DSCALE_SHIFT),
                digits: &data[2..],
            })
        }
        sign => Numeric::Finite(values::Decimal {
            negative: sign == NEGATIVE,
            weight: i32::from(word(2)? as i16),
            dscale: u32::from(header & DSCALE_MASK),
            digits: &data[4..],
        }),
    })
}

fn push(out: &mut String, text: &str, escape: bool) {
    if escape {
        push_escaped(out, text);
    } else {
        out.push_str(text);
    }
}

/// The XSD type of a column of type `typoid` in the WSDL: the type whose lexical space
/// [`wire_text`] writes for it.
pub fn xsd_type(typoid: pg_sys::Oid) -> &'static str {
    // SAFETY: a catalog lookup; a domain's values are values of its base type.
    match unsafe { pg_sys::getBaseType(typoid) } {
        pg_sys::BOOLOID => "xsd:boolean",
        pg_sys::INT2OID | pg_sys::INT4OID => "xsd:int",
        pg_sys::INT8OID => "xsd:long",
        pg_sys::NUMERICOID => "xsd:decimal",
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => "xsd:double",
        pg_sys::DATEOID => "xsd:date",
        pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => "xsd:dateTime",
        pg_sys::BYTEAOID => "xsd:base64Binary",
        _ => "xsd:string",
    }
}

/// The type's own text output.
///
/// # Safety
/// As for [`wire_text`].
pub unsafe fn output_text(datum: pg_sys::Datum, typoid: pg_sys::Oid) -> String {
    let mut output_fn = pg_sys::InvalidOid;
    let mut is_varlena = false;
    // SAFETY: `typoid` is a valid type; the output function returns a palloc'd C string.
    unsafe {
        pg_sys::getTypeOutputInfo(typoid, &mut output_fn, &mut is_varlena);
        let cstring = pg_sys::OidOutputFunctionCall(output_fn, datum);
        let text = CStr::from_ptr(cstring).to_string_lossy().into_owned();
        pg_sys::pfree(cstring.cast());
        text
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use super::Encoder;

    /// The wire text of `datum`, `None` when left out.
    fn written(encoder: &Encoder, datum: pg_sys::Datum) -> Option<String> {
        let mut out = String::new();
        // SAFETY: a non-NULL numeric datum, valid while the SPI result is.
        unsafe { encoder.write(datum, &mut out, true) }.then_some(out)
    }

    #[pg_test]
    fn numerics_are_written_as_numeric_out_writes_them() {
        // Values of every weight and scale, both header forms (weight beyond ±63 or over 63
        // places needs the long one), and the specials; stored in a table, so each is read
        // with the short varlena header a stored row gives it, and then with a 4-byte one.
        Spi::run(
            "CREATE TABLE n (v numeric);
             INSERT INTO n VALUES ('0'), ('-0.000'), ('0.00012'), ('-9999.9999'), ('10000'),
                 ('1e-20'), ('123456789012345678901234567890.123456789'), ('0.1'), ('1.10'),
                 ('-1e100'), ('1e300'), ('-1.5e-300'), ('NaN'), ('Infinity'), ('-Infinity');
             INSERT INTO n SELECT round((random() - 0.5)::numeric * 10::numeric ^ e, s)
                 FROM generate_series(-40, 40, 3) e, generate_series(0, 100, 9) s;",
        )
        .unwrap();
        let encoder = Encoder::for_type(pg_sys::NUMERICOID);
        let checked = Spi::connect(|client| {
            let mut table = client
                .select("SELECT v, v::text FROM n", None, &[])
                .unwrap();
            let mut checked = 0;
            while table.next().is_some() {
                let datum = table.get_datum_by_ordinal(1).unwrap().unwrap();
                let text: String = table.get(2).unwrap().unwrap();
                let expected = (!text.contains("Infinity") && text != "NaN").then_some(text);
                // SAFETY: as above.
                assert!(
                    unsafe { super::stored_numeric(datum) }.is_some(),
                    "read in place"
                );
                assert_eq!(written(&encoder, datum), expected);
                // SAFETY: detoasting a numeric gives it a 4-byte header (a copy).
                let long =
                    unsafe { pg_sys::Datum::from(pg_sys::pg_detoast_datum(datum.cast_mut_ptr())) };
                assert_eq!(written(&encoder, long), expected);
                checked += 1;
            }
            checked
        });
        assert!(checked > 300, "{checked} values checked");
    }
}
