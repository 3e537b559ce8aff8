//! What differs between the PostgreSQL majors outbound_msg builds for, kept in one place
//! (selected by pgrx's `pg13` ... `pg18` features).

use pgrx::pg_sys;

/// The number of an open relation's storage (its relfilenode): a rewrite gives it a new one.
///
/// # Safety
/// `relation` must be an open relation.
pub unsafe fn storage_number(relation: pg_sys::Relation) -> u32 {
    // SAFETY: the caller keeps the relation open; its relcache entry is valid.
    unsafe {
        #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
        let number = (*relation).rd_node.relNode;
        // PostgreSQL 16 renamed RelFileNode to RelFileLocator.
        #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
        let number = (*relation).rd_locator.relNumber;
        number.to_u32()
    }
}
