//! Background workers: a launcher (static, started by the postmaster once recovery has
//! finished, so nothing runs on a standby until promotion) and delivery workers, one per
//! database being served, at most `outbound_msg.max_workers` at once, started by the launcher
//! (see [`launcher`]).
//!
//! A worker is woken through its latch when a transaction that queued notifications commits
//! ([`wake`]); otherwise it sleeps until the next retry is due. It leaves when its database
//! has nothing queued for `outbound_msg.worker_idle_timeout` (at once if another database waits
//! for a place: see `shmem::others_waiting`), gives its place up after [`TURN`] when another
//! database waits for one (finishing what it has in flight, then waiting for its own next
//! turn), stops when its database loses the extension, and before DROP DATABASE ([`dropdb`]);
//! if it dies otherwise, the launcher starts a new one. The postmaster restarts the launcher
//! if it dies.

mod deliverer;
mod dropdb;
mod endpoints;
mod health;
pub mod http;
mod launcher;
mod pool;
pub mod retry;
pub mod shmem;
pub mod tls;
pub mod wake;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::{guc, queue};

/// How soon the postmaster restarts a launcher that died.
const LAUNCHER_RESTART: Duration = Duration::from_secs(5);

/// Cleared when a worker leaves with nothing left to do (its database has no extension, or
/// nothing queued): no replacement then, until the next request.
static REPLACE_ON_EXIT: AtomicBool = AtomicBool::new(true);

/// How long a worker serves its database while another database waits for a worker.
const TURN: Duration = Duration::from_secs(30);

/// Sets up shared memory, the DROP DATABASE hook and the launcher. Only possible while
/// `shared_preload_libraries` are loaded; a library loaded later (a plain `CREATE EXTENSION`
/// without preloading) captures but sends nothing.
pub fn register() {
    // SAFETY: a plain flag of the postmaster, read during `_PG_init`.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    shmem::init();
    dropdb::install();
    BackgroundWorkerBuilder::new("outbound_msg launcher")
        .set_type("outbound_msg launcher")
        .set_library("outbound_msg")
        .set_function("outbound_msg_launcher_main")
        .enable_spi_access()
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(LAUNCHER_RESTART))
        .load();
}

/// Entry point of a delivery worker; its argument is the database's OID.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn outbound_msg_worker_main(argument: pg_sys::Datum) {
    let database = pg_sys::Oid::from(argument.value() as u32);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    if !shmem::attach_worker(database) {
        return; // another worker serves this database
    }
    // SAFETY: registers a callback for this process's exit; `argument` is the database OID.
    unsafe { pg_sys::before_shmem_exit(Some(on_worker_exit), argument) };
    configure_session();

    let mut deliverer = match deliverer::Deliverer::new() {
        Ok(deliverer) => deliverer,
        Err(err) => error!("outbound_msg: could not set up delivery: {err}"),
    };
    let started = Instant::now();
    let mut idle_since: Option<Instant> = None;
    while !BackgroundWorker::sigterm_received() {
        reload_settings_if_asked();
        let Some(sleep) = deliverer.step() else {
            REPLACE_ON_EXIT.store(false, Ordering::Relaxed);
            return;
        };
        let now = Instant::now();
        if !deliverer.idle() || guc::pause_delivery() {
            idle_since = None;
        } else if idle_since.is_none() {
            idle_since = Some(now);
        }
        let others_wait = shmem::others_waiting(database, guc::max_workers());
        if others_wait && (idle_since.is_some() || now.duration_since(started) >= TURN) {
            // Its place goes to a waiting database once what is in flight has ended.
            deliverer.drain();
        }
        if deliverer.drained() {
            // Replaced in its turn if anything is left to deliver.
            let work_left = transaction(queue::has_work).unwrap_or(true);
            REPLACE_ON_EXIT.store(work_left, Ordering::Relaxed);
            return;
        }
        let idle_timeout = guc::worker_idle_timeout();
        if idle_since.is_some_and(|since| now.duration_since(since) >= idle_timeout) {
            if !transaction(queue::has_work).unwrap_or(true) {
                REPLACE_ON_EXIT.store(false, Ordering::Relaxed);
                return;
            }
            // Something is due later (a retry): look again after another idle timeout.
            idle_since = Some(now);
        }
        if !sleep.is_zero() {
            let idle_left = idle_since
                .map(|since| idle_timeout.saturating_sub(now.duration_since(since)))
                .unwrap_or(sleep);
            wait(
                sleep.min(idle_left.max(Duration::from_millis(1))),
                deliverer.wake_fd(),
            );
        }
    }
}

/// Frees the worker's slot; asks for a replacement unless it left with nothing to do.
#[pg_guard]
unsafe extern "C-unwind" fn on_worker_exit(_code: std::ffi::c_int, argument: pg_sys::Datum) {
    let database = pg_sys::Oid::from(argument.value() as u32);
    shmem::detach_worker(database, REPLACE_ON_EXIT.load(Ordering::Relaxed));
}

/// Sleeps until the latch is set (a signal, a wake request), the socket becomes readable (a
/// delivery ended), or `timeout` passes. Exits if the postmaster dies.
fn wait(timeout: Duration, socket: std::os::fd::RawFd) {
    let events = pg_sys::WL_LATCH_SET
        | pg_sys::WL_SOCKET_READABLE
        | pg_sys::WL_TIMEOUT
        | pg_sys::WL_EXIT_ON_PM_DEATH;
    // SAFETY: MyLatch is this process's latch; `socket` stays open while the deliverer lives.
    unsafe {
        pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            events as i32,
            socket,
            timeout.as_millis().min(i32::MAX as u128) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    // Absorbs what other backends signalled, a ProcSignalBarrier above all (DROP DATABASE
    // waits until every process has absorbed one): a paused or idle worker runs no query that
    // would.
    pgrx::check_for_interrupts!();
}

/// Runs `f` in a transaction of its own. An ERROR inside (a lock timeout against a concurrent
/// DROP EXTENSION, say) is logged and rolled back, and `None` returned: the worker carries on.
fn transaction<R>(f: impl FnOnce() -> R) -> Option<R> {
    // SAFETY: the worker's main loop holds no transaction between steps.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let f = std::panic::AssertUnwindSafe(f);
    pgrx::PgTryBuilder::new(move || {
        let result = f();
        // SAFETY: ends the transaction started above, then hands this process's table counters
        // (rows claimed, acknowledged, deleted) to the statistics system, as an idle backend
        // does: autovacuum and the queue's live-row count depend on them. PostgreSQL sends
        // them at most once a second.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
            pg_sys::pgstat_report_stat(false);
        }
        Some(result)
    })
    .catch_others(|error| {
        let message = match &error {
            pgrx::pg_sys::panic::CaughtError::PostgresError(report)
            | pgrx::pg_sys::panic::CaughtError::ErrorReport(report)
            | pgrx::pg_sys::panic::CaughtError::RustPanic {
                ereport: report, ..
            } => report.message().to_string(),
        };
        // SAFETY: rolls back whatever the failed step left; the loop starts clean again.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        warning!("outbound_msg worker: {message}; will try again");
        None
    })
    .execute()
}

/// Vacuums the queue (skipping it while another vacuum holds it), so claims do not wade through
/// the index entries of delivered groups until autovacuum's next round (a minute apart by
/// default, long enough for a busy worker to leave hundreds of thousands of dead entries).
/// VACUUM runs outside any transaction block and commits transactions of its own: it is
/// called between steps, like a utility command from a client.
fn vacuum_queue() {
    // SAFETY: the worker's main loop holds no transaction between steps; VACUUM commits this
    // transaction and starts the one committed below, as it does for PostgresMain.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
    }
    pgrx::PgTryBuilder::new(|| unsafe {
        let parsed = pg_sys::raw_parser(
            c"VACUUM (SKIP_LOCKED) outbound_msg.queue".as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        );
        let raw = (*(*parsed).elements).ptr_value as *mut pg_sys::RawStmt;
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::ExecVacuum(pstate, (*raw).stmt as *mut pg_sys::VacuumStmt, true);
        pg_sys::CommitTransactionCommand();
        pg_sys::pgstat_report_stat(false);
    })
    .catch_others(|_| {
        // SAFETY: rolls back whatever the failed vacuum left; autovacuum remains.
        unsafe { pg_sys::AbortOutOfAnyTransaction() };
        warning!("outbound_msg worker: could not vacuum the queue; autovacuum will");
    })
    .execute();
}

/// Session settings of a worker, set after connecting, over whatever `ALTER DATABASE` or
/// `ALTER ROLE ... SET` gave it (a database owner is less trusted than the worker's role):
/// - `search_path = pg_catalog, pg_temp`: no schema of the database's can stand in for a
///   function, operator or type of the worker's statements;
/// - `default_transaction_read_only`, `statement_timeout`, `idle_in_transaction_session_timeout`,
///   `row_security`, `default_transaction_isolation`, `transform_null_equals`: as PostgreSQL's
///   defaults, so that its statements mean and do what they say;
/// - `lock_timeout`: a lock it cannot get soon is an ERROR in the worker (caught by
///   [`transaction`]), well before the deadlock detector could pick the DDL it waits on;
/// - `synchronous_commit = off`: its transactions (claims, outcomes) need not wait for the WAL
///   flush. A claim or an acknowledgement lost in a crash only means the notifications are
///   sent again with the same Ids: delivery is at least once either way;
/// - `plan_cache_mode = force_custom_plan`: its kept statements are planned for the queue as it
///   is now. A generic plan made while the queue was nearly empty scans it whole, which under a
///   large backlog slows every claim until autovacuum's ANALYZE forces a new plan;
/// - `jit = off`: its statements each touch a few rows, but against a large backlog their cost
///   estimates pass `jit_above_cost`, and compiling every claim takes far longer than
///   running it.
fn configure_session() {
    for (name, value) in [
        (c"search_path", crate::roles::SAFE_SEARCH_PATH),
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"statement_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        (c"row_security", c"on"),
        (c"transform_null_equals", c"off"),
        (c"lock_timeout", c"200ms"),
        (c"synchronous_commit", c"off"),
        (c"plan_cache_mode", c"force_custom_plan"),
        (c"jit", c"off"),
    ] {
        // SAFETY: sets a session setting of this worker.
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
}

/// Re-reads the configuration after SIGHUP, as PostgreSQL's own processes do.
fn reload_settings_if_asked() {
    // SAFETY: these globals are only written by our own signal handler and by this process.
    unsafe {
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}
