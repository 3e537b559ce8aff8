//! The background worker: registered at server start (through `shared_preload_libraries`), it
//! connects to `outbound_msg.database` and delivers that database's queue.
//!
//! It starts only once recovery has finished, so it does nothing on a standby. The postmaster
//! restarts it if it dies.

mod deliver;

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::guc;

/// How long the worker sleeps when nothing is due before it looks at the queue again.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How soon the postmaster restarts a worker that died.
const RESTART_AFTER: Duration = Duration::from_secs(10);

/// Registers the worker. Only possible while `shared_preload_libraries` are being loaded; a
/// library loaded later (a plain `CREATE EXTENSION` without preloading) captures but sends nothing.
pub fn register() {
    // SAFETY: a plain flag of the postmaster, read during `_PG_init`.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("outbound_msg worker")
        .set_type("outbound_msg worker")
        .set_library("outbound_msg")
        .set_function("outbound_msg_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

/// Entry point of the worker process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn outbound_msg_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&guc::database()), None);
    log!(
        "outbound_msg worker started for database \"{}\"",
        guc::database()
    );

    let mut deliverer = deliver::Deliverer::new();
    // `wait_latch` returns false on SIGTERM or postmaster death: then leave.
    while BackgroundWorker::wait_latch(Some(IDLE_WAIT)) {
        reload_settings_if_asked();
        deliverer.deliver_due();
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
