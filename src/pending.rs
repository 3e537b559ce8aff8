//! Notifications captured but not yet written to the queue.
//!
//! The row trigger renders each change and appends it here; the buffer is written as groups of
//! notifications (one queue row per message and up to `batch_size` notifications) by the
//! statement-level trigger at the end of the statement, before commit or PREPARE if anything is
//! left (a statement on a partition does not fire its parent's statement trigger), and whenever
//! it grows large. Rows captured in a subtransaction that rolls back are forgotten with it; a
//! transaction that aborts forgets everything. So the queue receives exactly the committed
//! changes, as it would with one INSERT per row, at a fraction of the cost.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;

use crate::error::Result;
use crate::{guc, queue, roles, unguarded};

/// Written to the queue from the row trigger once this many notifications wait.
const FLUSH_AT: usize = 10_000;

struct Pending {
    message_id: i64,
    record_id: String,
    payload: String,
    /// Subtransaction that captured it: dropped if that subtransaction rolls back.
    subtransaction: pg_sys::SubTransactionId,
}

thread_local! {
    static BUFFER: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// The extension's owner, who writes the queue (the capture trigger runs as it).
    static OWNER: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Records the role that writes the queue when what is left is written before commit: the
/// extension's owner, as which the capture trigger runs.
pub fn set_writer(role: pg_sys::Oid) {
    OWNER.set(role);
}

/// Adds a captured notification. Runs inside the (SECURITY DEFINER) capture trigger.
pub fn add(message_id: i64, record_id: String, payload: String) -> Result<()> {
    register_callbacks();
    // SAFETY: reads the current subtransaction's id.
    let subtransaction = unsafe { unguarded::GetCurrentSubTransactionId() };
    let len = BUFFER.with_borrow_mut(|buffer| {
        buffer.push(Pending {
            message_id,
            record_id,
            payload,
            subtransaction,
        });
        buffer.len()
    });
    if len >= FLUSH_AT {
        flush()?;
    }
    Ok(())
}

/// Writes every waiting notification to the queue, grouped per message in capture order.
pub fn flush() -> Result<()> {
    let pending = BUFFER.with_borrow_mut(std::mem::take);
    if pending.is_empty() {
        return Ok(());
    }
    let mut groups = queue::Groups::new(guc::batch_size());
    for notification in pending {
        groups.push(
            notification.message_id,
            notification.record_id,
            notification.payload,
        );
    }
    queue::write_groups(groups).map(|_| ())
}

fn register_callbacks() {
    if REGISTERED.get() {
        return;
    }
    // SAFETY: registers callbacks that live as long as the library.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction), std::ptr::null_mut());
    }
    REGISTERED.set(true);
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        // Still inside the transaction: what is left is written in it, as the queue's owner.
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PARALLEL_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            if BUFFER.with_borrow(Vec::is_empty) {
                return;
            }
            // SAFETY: a snapshot for the queries of the flush, popped right after.
            unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
            let written = roles::run_as(OWNER.get(), flush);
            // SAFETY: pops the snapshot pushed above.
            unsafe { pg_sys::PopActiveSnapshot() };
            if let Err(err) = written {
                err.report();
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => BUFFER.with_borrow_mut(Vec::clear),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction(
    event: pg_sys::SubXactEvent::Type,
    subtransaction: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    BUFFER.with_borrow_mut(|buffer| match event {
        SUBXACT_EVENT_ABORT_SUB => buffer.retain(|p| p.subtransaction != subtransaction),
        SUBXACT_EVENT_COMMIT_SUB => {
            for pending in buffer
                .iter_mut()
                .filter(|p| p.subtransaction == subtransaction)
            {
                pending.subtransaction = parent;
            }
        }
        _ => {}
    });
}
