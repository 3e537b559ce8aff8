//! PostgreSQL functions that only read backend state and cannot raise an ERROR, declared here
//! without pgrx's error guard (a `sigsetjmp` per call): the capture path calls them for every
//! row, where that guard cost as much as the call.

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    /// The current subtransaction.
    pub fn GetCurrentSubTransactionId() -> pg_sys::SubTransactionId;
}
