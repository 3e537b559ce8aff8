//! `DROP DATABASE` and `ALTER DATABASE ... RENAME` need the database free of connections. A
//! ProcessUtility hook, present in every backend because the library is preloaded, stops that
//! database's worker first and waits for it to leave; if the command then fails, the database
//! asks for a worker again.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::PgTryBuilder;

use super::shmem;

/// Longest wait for a worker to exit (DROP DATABASE itself waits 5 s for other sessions).
const STOP_WAIT: Duration = Duration::from_secs(10);

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

/// Installs the hook. Called once, while preloading.
pub fn install() {
    // SAFETY: runs in the postmaster during `_PG_init`, before any backend exists.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
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
    let run = || {
        // SAFETY: hands the arguments on unchanged, as every ProcessUtility hook does.
        unsafe {
            match PREVIOUS {
                Some(previous) => previous(
                    statement,
                    query,
                    read_only_tree,
                    context,
                    params,
                    environment,
                    destination,
                    completion,
                ),
                None => pg_sys::standard_ProcessUtility(
                    statement,
                    query,
                    read_only_tree,
                    context,
                    params,
                    environment,
                    destination,
                    completion,
                ),
            }
        }
    };
    // SAFETY: the statement is the one being executed.
    let Some(database) = (unsafe { database_needing_no_connections(statement) }) else {
        return run();
    };
    stop_worker(database);
    PgTryBuilder::new(run)
        .catch_others(|error| {
            // The database still exists: it gets a worker again.
            shmem::request_delivery(database, &[]);
            error.rethrow()
        })
        .execute()
}

/// The database a DROP DATABASE or ALTER DATABASE ... RENAME statement names, if it exists.
unsafe fn database_needing_no_connections(
    statement: *mut pg_sys::PlannedStmt,
) -> Option<pg_sys::Oid> {
    // SAFETY: the node tag tells which statement struct the node is.
    unsafe {
        let node = (*statement).utilityStmt;
        if node.is_null() {
            return None;
        }
        let name = match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => (*node.cast::<pg_sys::DropdbStmt>()).dbname,
            pg_sys::NodeTag::T_RenameStmt => {
                let rename = &*node.cast::<pg_sys::RenameStmt>();
                if rename.renameType != pg_sys::ObjectType::OBJECT_DATABASE {
                    return None;
                }
                rename.subname
            }
            _ => return None,
        };
        if name.is_null() {
            return None;
        }
        let oid = pg_sys::get_database_oid(CStr::from_ptr(name).as_ptr(), true);
        (oid != pg_sys::InvalidOid).then_some(oid)
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
