//! `DROP DATABASE` and `ALTER DATABASE ... RENAME` need the database free of connections. A
//! ProcessUtility hook, present in every backend because the library is preloaded, stops that
//! database's worker first and waits for it to leave. A database that still exists afterwards
//! (renamed, or its command's transaction aborted) asks for a worker again: the worker looks
//! at its queue, and leaves at once if nothing is there.
//!
//! The hook passes every command, and every ERROR a command raises, through unchanged: it
//! calls the next hook without a guard, so an ERROR is never caught and raised again by Rust.

use std::cell::Cell;
use std::ffi::CStr;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use super::shmem;
use crate::unguarded;

/// Longest wait for a worker to exit (DROP DATABASE itself waits 5 s for other sessions).
const STOP_WAIT: Duration = Duration::from_secs(10);

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// What a command that needs its database free of connections does to it.
#[derive(Clone, Copy)]
enum Command {
    Drop,
    Rename,
}

thread_local! {
    /// The database whose worker this backend stopped for a command of the current
    /// transaction, and the command: asked for again if the database still exists at the end.
    static STOPPED: Cell<Option<(pg_sys::Oid, Command)>> = const { Cell::new(None) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook. Called once, while preloading.
pub fn install() {
    // SAFETY: runs in the postmaster during `_PG_init`, before any backend exists.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// Not guarded: nothing here may panic, and no frame of it needs dropping when the command
/// raises an ERROR.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    statement: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    environment: *mut pg_sys::QueryEnvironment,
    destination: *mut pg_sys::DestReceiver,
    completion: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the statement being executed; the arguments go on unchanged, as every
    // ProcessUtility hook passes them.
    unsafe {
        free_database_for(statement);
        let next = PREVIOUS.unwrap_or(unguarded::passing::standard_ProcessUtility);
        next(
            statement,
            query,
            read_only_tree,
            context,
            params,
            environment,
            destination,
            completion,
        )
    }
}

/// Stops the worker of the database a DROP DATABASE or ALTER DATABASE ... RENAME names.
#[pg_guard]
unsafe extern "C-unwind" fn free_database_for(statement: *mut pg_sys::PlannedStmt) {
    // SAFETY: the statement being executed.
    let Some((database, command)) = (unsafe { database_needing_no_connections(statement) }) else {
        return;
    };
    if !CALLBACK_REGISTERED.replace(true) {
        // SAFETY: registers a callback that lives as long as the library.
        unsafe { pg_sys::RegisterXactCallback(Some(on_transaction_end), std::ptr::null_mut()) };
    }
    STOPPED.set(Some((database, command)));
    stop_worker(database);
}

/// A database that was renamed, or whose command failed, still exists: it gets a worker
/// again (queued retries would otherwise wait for the next commit that queues something).
#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            if let Some((database, _)) = STOPPED.take() {
                shmem::request_delivery(database, &[]);
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            if let Some((database, Command::Rename)) = STOPPED.take() {
                shmem::request_delivery(database, &[]);
            }
        }
        XACT_EVENT_PREPARE => {
            STOPPED.set(None);
        }
        _ => {}
    }
}

/// The database a DROP DATABASE or ALTER DATABASE ... RENAME statement names, if it exists,
/// and which command it is.
unsafe fn database_needing_no_connections(
    statement: *mut pg_sys::PlannedStmt,
) -> Option<(pg_sys::Oid, Command)> {
    // SAFETY: the node tag tells which statement struct the node is.
    unsafe {
        let node = (*statement).utilityStmt;
        if node.is_null() {
            return None;
        }
        let (name, command) = match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                ((*node.cast::<pg_sys::DropdbStmt>()).dbname, Command::Drop)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = &*node.cast::<pg_sys::RenameStmt>();
                if rename.renameType != pg_sys::ObjectType::OBJECT_DATABASE {
                    return None;
                }
                (rename.subname, Command::Rename)
            }
            _ => return None,
        };
        if name.is_null() {
            return None;
        }
        let oid = pg_sys::get_database_oid(CStr::from_ptr(name).as_ptr(), true);
        (oid != pg_sys::InvalidOid).then_some((oid, command))
    }
}

/// Stops the database's worker and waits until it has left.
fn stop_worker(database: pg_sys::Oid) {
    let Some(pid) = shmem::stop_worker(database) else {
        return;
    };
    // SAFETY: signals our own worker process; a pid that is gone makes kill fail harmlessly.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_WAIT;
    while shmem::worker_running(database) && Instant::now() < deadline {
        pgrx::check_for_interrupts!();
        // SAFETY: a plain sleep of this backend.
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}
