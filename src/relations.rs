//! The extension's own relations, found by name in the `outbound_msg` schema (their OIDs differ
//! in every database and after a restore).

use pgrx::pg_sys;

use crate::error::{Error, Kind, Result};

/// The OID of the extension's relation `outbound_msg.name`; InvalidOid while there is none.
pub fn extension_relation(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: catalog cache lookups by name; a missing schema gives InvalidOid.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"outbound_msg".as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), schema)
    }
}

/// The OID of the extension's relation `outbound_msg.name`, which must exist (an internal
/// error otherwise).
pub fn required_relation(name: &std::ffi::CStr) -> Result<pg_sys::Oid> {
    let relid = extension_relation(name);
    if relid == pg_sys::InvalidOid {
        return Err(Error::new(
            Kind::Internal,
            format!(
                "relation outbound_msg.{} does not exist",
                name.to_string_lossy()
            ),
        ));
    }
    Ok(relid)
}
