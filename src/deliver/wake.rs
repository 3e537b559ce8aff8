//! Wake on commit: a transaction that queued notifications asks for delivery when it commits,
//! so the worker sends them at once instead of at its next timed look at the queue. It also
//! hands the worker the addresses of the queue rows it wrote: fresh rows are in no index, and
//! this is how the worker finds them without reading the queue.
//!
//! The callback is registered once per backend; backend-local state says whether the current
//! transaction queued anything. Nothing in the callback can fail: it only sets latches and
//! shared atomics.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;

use super::shmem;

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Queue rows this transaction wrote (see `queue::announcement`).
    static FRESH_ROWS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
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

/// Records queue rows this transaction wrote (`queue::announcement`s), for its worker;
/// [`after_commit`] must be asked too.
pub fn rows_written(rows: &[u64]) {
    if shmem::available() {
        FRESH_ROWS.with_borrow_mut(|fresh| fresh.extend_from_slice(rows));
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
                FRESH_ROWS.with_borrow_mut(|fresh| {
                    // SAFETY: reads this backend's database.
                    shmem::request_delivery(unsafe { pg_sys::MyDatabaseId }, fresh);
                    fresh.clear();
                });
            }
        }
        // A prepared transaction commits elsewhere, announcing nothing: its worker sweeps the
        // queue until no prepared transaction is left.
        XACT_EVENT_PREPARE => {
            if PENDING.replace(false) {
                // SAFETY: reads this backend's database.
                shmem::rows_prepared(unsafe { pg_sys::MyDatabaseId });
            }
            FRESH_ROWS.with_borrow_mut(Vec::clear);
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            PENDING.set(false);
            FRESH_ROWS.with_borrow_mut(Vec::clear);
        }
        _ => {}
    }
}
