//! Wake on commit: a transaction that queued notifications asks for delivery when it commits,
//! so the worker sends them at once instead of at its next timed look at the queue.
//!
//! The callback is registered once per backend; a backend-local flag says whether the current
//! transaction queued anything. Nothing in the callback can fail: it only sets latches.

use std::cell::Cell;

use pgrx::prelude::*;

use super::shmem;

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Asks for delivery in this database when the current transaction commits.
pub fn after_commit() {
    if PENDING.get() || !shmem::available() {
        return;
    }
    PENDING.set(true);
    if !REGISTERED.get() {
        // SAFETY: registers a callback that lives as long as the library.
        unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut()) };
        REGISTERED.set(true);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            if PENDING.replace(false) {
                // SAFETY: reads this backend's database.
                shmem::request_delivery(unsafe { pg_sys::MyDatabaseId });
            }
        }
        // A prepared transaction commits elsewhere: the worker's timed look finds its rows.
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => PENDING.set(false),
        _ => {}
    }
}
