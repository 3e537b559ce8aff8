//! The background worker: registered at server start (through `shared_preload_libraries`), it
//! connects to `outbound_msg.database` and delivers that database's queue.
//!
//! It starts only once recovery has finished, so it does nothing on a standby. The postmaster
//! restarts it if it dies.

mod deliver;
mod pool;

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::guc;

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

    let mut deliverer = match deliver::Deliverer::new() {
        Ok(deliverer) => deliverer,
        Err(err) => error!("outbound_msg: could not set up delivery: {err}"),
    };
    while !BackgroundWorker::sigterm_received() {
        reload_settings_if_asked();
        let sleep = deliverer.step().unwrap_or(deliver::IDLE_WAIT);
        if !sleep.is_zero() {
            wait(sleep, deliverer.wake_fd());
        }
    }
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
