//! The wire text of one column value (SPEC §3): decodes a datum by its type and hands the raw
//! value to [`crate::values`]. Types without a special rule go through their output function.

use std::ffi::CStr;

use pgrx::{pg_sys, FromDatum};

use crate::values;

/// The text a value is sent as, or `None` when the field is left out (an SQL NULL is handled by
/// the caller; this is for values the field's XSD type cannot represent).
///
/// # Safety
/// `datum` must be a non-NULL value of type `typoid`, valid for the current memory context.
pub unsafe fn wire_text(datum: pg_sys::Datum, typoid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a domain's values are values of its base type.
    let base = unsafe { pg_sys::getBaseType(typoid) };
    // SAFETY (all arms): the caller guarantees `datum` is a non-NULL value of `base`.
    unsafe {
        match base {
            pg_sys::BOOLOID => Some(values::boolean(bool::from_datum(datum, false)?).to_string()),
            pg_sys::INT2OID => i16::from_datum(datum, false).map(|v| v.to_string()),
            pg_sys::INT4OID => i32::from_datum(datum, false).map(|v| v.to_string()),
            pg_sys::INT8OID => i64::from_datum(datum, false).map(|v| v.to_string()),
            pg_sys::FLOAT4OID => f32::from_datum(datum, false).map(values::real),
            pg_sys::FLOAT8OID => f64::from_datum(datum, false).map(values::double),
            pg_sys::NUMERICOID => values::numeric(&output_text(datum, base)).map(str::to_string),
            pg_sys::TIMESTAMPTZOID => values::timestamptz(datum.value() as i64),
            pg_sys::TIMESTAMPOID => values::timestamp(datum.value() as i64),
            pg_sys::DATEOID => values::date(datum.value() as i32),
            pg_sys::BYTEAOID => <&[u8]>::from_datum(datum, false).map(values::bytea),
            _ => Some(output_text(datum, base)),
        }
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
