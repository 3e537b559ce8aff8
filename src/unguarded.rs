//! A few PostgreSQL functions that only read backend state and cannot raise an ERROR, declared
//! here without pgrx's error guard (a `sigsetjmp` per call): the capture trigger calls them for
//! every row, where that guard cost as much as the call.

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    /// Start of the current transaction.
    pub fn GetCurrentTransactionStartTimestamp() -> pg_sys::TimestampTz;
    /// Start of the current client statement.
    pub fn GetCurrentStatementStartTimestamp() -> pg_sys::TimestampTz;
    /// The current subtransaction.
    pub fn GetCurrentSubTransactionId() -> pg_sys::SubTransactionId;
}
