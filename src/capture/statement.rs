//! Notifications captured but not yet written to the queue.
//!
//! The row trigger renders each change and appends it here; the buffer is written as groups of
//! notifications (one queue row per message and up to `batch_size` notifications) when the
//! statement whose AFTER triggers captured them finishes (an `ExecutorFinish` hook: no second
//! trigger to call per statement), before commit or PREPARE if anything is left (COPY runs no
//! executor of its own), and whenever the buffer grows large.
//!
//! A notification is written only in the subtransaction that captured it (or, once that one
//! committed, its parent): a row written in a subtransaction that later rolls back would be lost
//! although the change it reports stays. Rows captured in a subtransaction that rolls back are
//! forgotten with it; a transaction that aborts forgets everything. So the queue receives
//! exactly the committed changes, as it would with one INSERT per row, at a fraction of the cost.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;

use crate::error::Result;
use crate::queue::TextAt;
use crate::{guc, queue, roles, unguarded};

/// Written to the queue from the row trigger once this many notifications wait: few enough
/// that their text stays in the CPU's cache until written, and
/// its buffer is reused rather than grown and freed again by each large statement.
const FLUSH_AT: usize = 1_000;

struct Pending {
    message_id: i64,
    /// Where its record id and then its payload sit in [`TEXT`].
    text: TextAt,
    /// Subtransaction that captured it: dropped if that subtransaction rolls back.
    subtransaction: pg_sys::SubTransactionId,
    /// How deep in nested statements' `ExecutorFinish` it was captured (0: outside any).
    depth: u32,
}

thread_local! {
    static BUFFER: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    /// The record ids and payloads of what waits, one after another: one buffer, not two
    /// allocations a notification. Emptied when the buffer is.
    static TEXT: RefCell<String> = const { RefCell::new(String::new()) };
    /// The buffer length at which the row trigger writes it.
    static FLUSH_LENGTH: Cell<usize> = const { Cell::new(FLUSH_AT) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// The extension's owner, who writes the queue.
    static OWNER: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    /// Statements whose `ExecutorFinish` is running, nested in one another.
    static FINISH_DEPTH: Cell<u32> = const { Cell::new(0) };
    /// The statement depth at the start of each open subtransaction, innermost last.
    static SUBTRANSACTION_DEPTHS: RefCell<Vec<(pg_sys::SubTransactionId, u32)>> =
        const { RefCell::new(Vec::new()) };
    /// The deepest `depth` in the buffer (0 when empty): a statement finishing above it has
    /// nothing to write, known without reading the buffer (criteria run a query per row).
    static DEEPEST: Cell<u32> = const { Cell::new(0) };
}

static mut PREVIOUS_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;

/// Installs the hook that writes what a statement captured when it finishes.
pub fn install_hook() {
    // SAFETY: runs once, in _PG_init, before any query of this process; the previous hook is
    // kept and called.
    unsafe {
        PREVIOUS_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
    }
    register_callbacks();
}

/// Not guarded, so that an ERROR of the statement (a foreign key's check, say) passes through
/// unchanged: nothing here may panic, and no frame of it needs dropping. The depth an ERROR
/// leaves set is put back when its (sub)transaction aborts.
unsafe extern "C-unwind" fn executor_finish(query: *mut pg_sys::QueryDesc) {
    let outer = FINISH_DEPTH.get();
    let depth = outer + 1;
    FINISH_DEPTH.set(depth);
    // SAFETY: the executor's own arguments, passed on unchanged.
    unsafe {
        PREVIOUS_EXECUTOR_FINISH.unwrap_or(unguarded::passing::standard_ExecutorFinish)(query)
    };
    FINISH_DEPTH.set(outer);
    // The statement's AFTER triggers have run: write what they captured (rows captured by
    // statements nested inside them were written when those finished).
    if DEEPEST.get() >= depth {
        // SAFETY: a guarded call of ours; its ERROR is the statement's.
        unsafe { write_finished(depth) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn write_finished(depth: u32) {
    if let Err(err) = flush(depth) {
        err.report();
    }
}

/// Records the extension's owner, who writes the queue (and as whom capture evaluates
/// criteria); looked up when the capture trigger loads the definitions.
pub fn set_owner(role: pg_sys::Oid) {
    OWNER.set(role);
}

/// Adds a captured notification of `message_id`: `render` appends its record id then its
/// payload, and returns the record id's length. Runs inside the capture trigger.
pub fn add(message_id: i64, render: impl FnOnce(&mut String) -> Result<usize>) -> Result<()> {
    // Rendered in place. Output functions (C) run no statements as a rule; one that did, and
    // so captured again, would fail on the borrowed buffer with an error, not write into it.
    // What an ERROR interrupted stays unreferenced until the buffer empties.
    let at = TEXT.with_borrow_mut(|text| {
        let start = text.len();
        match render(text) {
            Ok(key_length) => Ok(TextAt {
                start,
                payload_start: start + key_length,
                end: text.len(),
            }),
            Err(err) => {
                text.truncate(start);
                Err(err)
            }
        }
    })?;
    // SAFETY: reads the current subtransaction's id.
    let subtransaction = unsafe { unguarded::GetCurrentSubTransactionId() };
    let depth = FINISH_DEPTH.get();
    let len = BUFFER.with_borrow_mut(|buffer| {
        buffer.push(Pending {
            message_id,
            text: at,
            subtransaction,
            depth,
        });
        buffer.len()
    });
    DEEPEST.set(DEEPEST.get().max(depth));
    if len >= FLUSH_LENGTH.get() {
        flush(0)?;
        // What is left belongs to enclosing subtransactions: wait for as many new ones again.
        FLUSH_LENGTH.set(BUFFER.with_borrow(Vec::len) + FLUSH_AT);
    }
    Ok(())
}

/// Forgets what waits of messages dropped since it was captured (with their table, say):
/// only rows a COPY captured, or a large statement inside a subtransaction left, wait so long.
fn forget_vanished_messages() -> Result<()> {
    let mut waiting: Vec<i64> = BUFFER.with_borrow(|b| b.iter().map(|p| p.message_id).collect());
    waiting.sort_unstable();
    waiting.dedup();
    let existing: Vec<i64> = Spi::get_one_with_args::<Vec<i64>>(
        "SELECT coalesce(array_agg(id), '{}') FROM outbound_msg.message WHERE id = ANY ($1)",
        &[waiting.into()],
    )?
    .unwrap_or_default();
    forget(|p| !existing.contains(&p.message_id));
    Ok(())
}

/// Forgets what waits of a message that is being dropped.
pub fn forget_message(message_id: i64) {
    forget(|p| p.message_id == message_id);
}

/// Takes the waiting notifications `due` accepts out of the buffer, in order, and hands each
/// to `take` with its record id and payload. The rest stay, their text moved together, and the
/// buffer keeps its memory for the next statement (up to [`KEPT_TEXT`] of text).
fn take_out(mut due: impl FnMut(&Pending) -> bool, mut take: impl FnMut(&Pending, &str, &str)) {
    // Subtransactions end often (a PL/pgSQL block with EXCEPTION is one each time): when none of
    // what waits is theirs, nothing is copied.
    if BUFFER.with_borrow(|buffer| !buffer.is_empty() && !buffer.iter().any(&mut due)) {
        return;
    }
    BUFFER.with_borrow_mut(|buffer| {
        TEXT.with_borrow_mut(|text| {
            let mut kept = String::new();
            buffer.retain_mut(|p| {
                let at = p.text;
                if due(p) {
                    take(p, at.record_id(text), at.payload(text));
                    return false;
                }
                let start = kept.len();
                kept.push_str(&text[at.start..at.end]);
                p.text = TextAt {
                    start,
                    payload_start: start + (at.payload_start - at.start),
                    end: kept.len(),
                };
                true
            });
            *text = if kept.is_empty() {
                emptied(std::mem::take(text))
            } else {
                kept
            };
        });
        DEEPEST.set(buffer.iter().map(|p| p.depth).max().unwrap_or(0));
    })
}

/// Most text capacity the buffer keeps once empty: what a statement of a few thousand rows
/// needs, not what a large COPY once did.
const KEPT_TEXT: usize = 1 << 20;

/// `text` emptied, its memory kept for the buffer if not more than [`KEPT_TEXT`].
fn emptied(mut text: String) -> String {
    text.clear();
    if text.capacity() > KEPT_TEXT {
        return String::new();
    }
    text
}

/// Forgets the waiting notifications `forgotten` accepts.
fn forget(forgotten: impl FnMut(&Pending) -> bool) {
    take_out(forgotten, |_, _, _| ());
}

/// Writes, as the extension's owner, grouped per message in capture order, every waiting
/// notification captured at statement depth `depth` or deeper by the current subtransaction.
fn flush(depth: u32) -> Result<()> {
    // SAFETY: reads the current subtransaction's id.
    let current = unsafe { unguarded::GetCurrentSubTransactionId() };
    let due = |p: &Pending| p.depth >= depth && p.subtransaction == current;
    let size = guc::batch_size();
    let groups = if BUFFER.with_borrow(|buffer| buffer.iter().all(due)) {
        // The common case: everything waiting is written, and its text goes along uncopied.
        let mut groups = queue::Groups::over(size, TEXT.take());
        BUFFER.with_borrow_mut(|buffer| {
            for p in buffer.drain(..) {
                groups.push_written(p.message_id, p.text);
            }
        });
        DEEPEST.set(0);
        groups
    } else {
        let mut groups = queue::Groups::new(size);
        groups.reserve(TEXT.with_borrow(String::len));
        take_out(due, |p, record_id, payload| {
            groups.push(p.message_id, record_id, payload)
        });
        groups
    };
    if groups.is_empty() {
        return Ok(());
    }
    let written = roles::run_as(OWNER.get(), || queue::write_groups(&groups));
    // Its memory serves the next statement's notifications.
    let text = emptied(groups.into_text());
    TEXT.with_borrow_mut(|kept| {
        if kept.is_empty() && kept.capacity() < text.capacity() {
            *kept = text;
        }
    });
    written.map(|_| ())
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
        // Still inside the transaction, in its top level: what is left is written in it, as
        // the queue's owner.
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PARALLEL_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            if BUFFER.with_borrow(Vec::is_empty) {
                return;
            }
            // DROP EXTENSION in this transaction took the queue, and every message, with it.
            if crate::relations::extension_relation(c"queue") == pg_sys::InvalidOid {
                forget(|_| true);
                return;
            }
            // SAFETY: a snapshot for the queries of the flush, popped right after.
            unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
            let written = roles::run_sql_as_owner(OWNER.get(), forget_vanished_messages)
                .and_then(|()| flush(0));
            // SAFETY: pops the snapshot pushed above.
            unsafe { pg_sys::PopActiveSnapshot() };
            FLUSH_LENGTH.set(FLUSH_AT);
            if let Err(err) = written {
                err.report();
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            forget(|_| true);
            FLUSH_LENGTH.set(FLUSH_AT);
            FINISH_DEPTH.set(0);
            SUBTRANSACTION_DEPTHS.with_borrow_mut(Vec::clear);
        }
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
    match event {
        SUBXACT_EVENT_START_SUB => SUBTRANSACTION_DEPTHS
            .with_borrow_mut(|depths| depths.push((subtransaction, FINISH_DEPTH.get()))),
        SUBXACT_EVENT_ABORT_SUB => {
            forget(|p| p.subtransaction == subtransaction);
            // An ERROR may have left statements' depths counted that it ended.
            if let Some(depth) = depth_at_start(subtransaction) {
                FINISH_DEPTH.set(depth);
            }
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            depth_at_start(subtransaction);
            parent_takes_over(subtransaction, parent);
        }
        _ => {}
    }
}

/// The statement depth when `subtransaction` started, forgotten as it ends.
fn depth_at_start(subtransaction: pg_sys::SubTransactionId) -> Option<u32> {
    SUBTRANSACTION_DEPTHS.with_borrow_mut(|depths| {
        let at = depths.iter().rposition(|(id, _)| *id == subtransaction)?;
        let depth = depths[at].1;
        depths.truncate(at);
        Some(depth)
    })
}

/// What a committed subtransaction captured now belongs to its parent.
fn parent_takes_over(subtransaction: pg_sys::SubTransactionId, parent: pg_sys::SubTransactionId) {
    BUFFER.with_borrow_mut(|buffer| {
        for pending in buffer
            .iter_mut()
            .filter(|p| p.subtransaction == subtransaction)
        {
            pending.subtransaction = parent;
        }
    })
}
