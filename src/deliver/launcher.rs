//! The launcher: one static background worker, connected to no database, that starts delivery
//! workers for the databases that ask for one, at most `outbound_msg.max_workers` at once,
//! those that have waited longest first.
//!
//! At start it asks for every connectable database; a worker whose database lacks the
//! extension, or has nothing to deliver, exits at once. Afterwards requests come from commits
//! that queued notifications (including `CREATE EXTENSION`), and from workers that died or
//! gave their place up while work remained. Restarts of one database are paced, so a worker
//! that keeps failing cannot spin.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use super::{reload_settings_if_asked, shmem};
use crate::guc;

/// Shortest time between two starts of a worker for the same database.
const RESTART_PAUSE: Duration = Duration::from_secs(2);
/// Longest sleep: the launcher only acts on requests, which set its latch.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// Entry point of the launcher process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn outbound_msg_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: the launcher reads only the shared catalog pg_database.
    BackgroundWorker::connect_worker_to_spi(None, None);
    shmem::register_launcher();
    for database in connectable_databases() {
        shmem::request_delivery(database, &[]);
    }
    let mut last_start: HashMap<u32, Instant> = HashMap::new();
    // Databases not started this time, and whether for lack of a background worker process.
    let mut deferred: Vec<(pg_sys::Oid, bool)> = Vec::new();
    let mut sleep = Duration::ZERO;
    let mut asked_all = Instant::now();
    while BackgroundWorker::wait_latch(Some(sleep)) {
        reload_settings_if_asked();
        // While requests found no free slot, every database is asked again once a minute:
        // those with nothing to do leave at once.
        if asked_all.elapsed() >= IDLE_WAIT && shmem::take_overflowed() {
            asked_all = Instant::now();
            for database in connectable_databases() {
                shmem::request_delivery(database, &[]);
            }
        }
        sleep = IDLE_WAIT;
        for (database, short_of_processes) in deferred.drain(..) {
            shmem::start_failed(database, short_of_processes);
        }
        for database in shmem::to_start(guc::max_workers()) {
            let since = last_start.get(&database.to_u32()).map(Instant::elapsed);
            match since {
                Some(since) if since < RESTART_PAUSE => {
                    // At least 1 ms: a shorter wait rounds to none, and the loop would spin.
                    sleep = sleep
                        .min(RESTART_PAUSE - since)
                        .max(Duration::from_millis(1));
                    deferred.push((database, false));
                }
                _ => {
                    if start_worker(database) {
                        last_start.insert(database.to_u32(), Instant::now());
                    } else {
                        sleep = sleep.min(RESTART_PAUSE);
                        deferred.push((database, true));
                    }
                }
            }
        }
    }
    // Exit code 1: the postmaster restarts a launcher that was terminated (code 0 would
    // deregister it). At shutdown nothing is restarted anyway.
    // SAFETY: ends this process the way PostgreSQL's own background workers do.
    unsafe { pg_sys::proc_exit(1) };
}

/// Starts a delivery worker for `database`; false if no background worker slot was free.
fn start_worker(database: pg_sys::Oid) -> bool {
    let started =
        BackgroundWorkerBuilder::new(&format!("outbound_msg worker {}", database.to_u32()))
            .set_type("outbound_msg worker")
            .set_library("outbound_msg")
            .set_function("outbound_msg_worker_main")
            .set_argument(Some(pg_sys::Datum::from(database)))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            // The launcher restarts workers itself, when their database still wants one.
            .set_restart_time(None)
            .load_dynamic();
    if started.is_err() {
        warning!(
            "outbound_msg: could not start a worker for database {}: no background worker slot is free",
            database.to_u32()
        );
        warning!("outbound_msg: raise max_worker_processes, or lower outbound_msg.max_workers");
    }
    started.is_ok()
}

/// Databases that accept connections and are not templates, from the shared catalog.
fn connectable_databases() -> Vec<pg_sys::Oid> {
    let mut databases = Vec::new();
    // SAFETY: a catalog scan in its own transaction, the way PostgreSQL's own launchers list
    // databases; every tuple is read before the scan ends.
    unsafe {
        pg_sys::StartTransactionCommand();
        let relation = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(relation, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let database = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if database.datallowconn && !database.datistemplate {
                databases.push(database.oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as _);
        pg_sys::CommitTransactionCommand();
    }
    databases
}
