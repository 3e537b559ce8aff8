//! Shared memory of the launcher and the per-database workers: one slot per database being
//! served, holding the worker's pid and latch, and a flag asking the launcher for a worker.
//!
//! Latches live in the shared PGPROC array, so a latch's address is valid in every process of
//! the cluster. Exists only when the library is preloaded; [`available`] says so, and every
//! other function does nothing without it.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::lwlock::PgLwLock;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// Most databases served at once.
pub const MAX_DATABASES: usize = 64;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The database's OID; 0 marks a free slot.
    database: u32,
    /// The worker's pid; 0 when none runs.
    pid: i32,
    /// Address of the worker's latch; 0 when none runs.
    latch: usize,
    /// A commit queued work (or a worker must be restarted) and no worker runs.
    wanted: bool,
    /// The worker is being stopped for DROP DATABASE: it must not be restarted.
    stopping: bool,
    /// A commit already set the worker's latch since its last claim: later commits need not.
    woken: bool,
    /// Delivery is paused: commits do not wake the worker.
    paused: bool,
}

impl Slot {
    /// A worker runs and was already woken since its last claim, or is paused.
    fn needs_no_wake(&self) -> bool {
        self.latch != 0 && (self.woken || self.paused)
    }
}

#[derive(Clone, Copy)]
struct Shared {
    launcher_latch: usize,
    slots: [Slot; MAX_DATABASES],
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_latch: 0,
            slots: [Slot::default(); MAX_DATABASES],
        }
    }
}

// SAFETY: plain data without pointers into process-local memory.
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: the name is unique to this extension.
static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"outbound_msg") };
/// Set in the postmaster while preloading; inherited by every process it forks.
static AVAILABLE: AtomicBool = AtomicBool::new(false);

/// Reserves the shared memory. Only while `shared_preload_libraries` are loaded.
pub fn init() {
    pg_shmem_init!(SHARED);
    AVAILABLE.store(true, Ordering::Relaxed);
}

/// Whether the shared memory exists (the library was preloaded).
pub fn available() -> bool {
    AVAILABLE.load(Ordering::Relaxed)
}

fn set_latch(address: usize) {
    if address != 0 {
        // SAFETY: a PGPROC latch in shared memory; setting a latch is always allowed.
        unsafe { pg_sys::SetLatch(address as *mut pg_sys::Latch) }
    }
}

fn my_latch() -> usize {
    // SAFETY: this process's latch, in shared memory.
    unsafe { pg_sys::MyLatch as usize }
}

/// Asks for delivery in `database`: wakes its worker, or has the launcher start one.
pub fn request_delivery(database: pg_sys::Oid) {
    if !available() {
        return;
    }
    // Most commits find the worker already woken (or paused): a shared lock tells them so
    // without making concurrent commits wait for one another.
    let settled = SHARED
        .share()
        .slots
        .iter()
        .any(|s| s.database == database.to_u32() && s.needs_no_wake());
    if settled {
        return;
    }
    let latch = {
        let mut shared = SHARED.exclusive();
        let launcher = shared.launcher_latch;
        match slot_of(&mut shared.slots, database.to_u32(), true) {
            Some(slot) if slot.needs_no_wake() => 0,
            Some(slot) if slot.latch != 0 => {
                slot.woken = true;
                slot.latch
            }
            Some(slot) => {
                slot.wanted = true;
                launcher
            }
            None => 0,
        }
    };
    set_latch(latch);
}

/// The slot of `database`, created if `create` and one is free.
fn slot_of(slots: &mut [Slot], database: u32, create: bool) -> Option<&mut Slot> {
    let index = slots
        .iter()
        .position(|s| s.database == database)
        .or_else(|| {
            create
                .then(|| slots.iter().position(|s| s.database == 0))
                .flatten()
        })?;
    let slot = &mut slots[index];
    slot.database = database;
    Some(slot)
}

/// Records this process as the launcher.
pub fn register_launcher() {
    SHARED.exclusive().launcher_latch = my_latch();
}

/// Databases that want a worker and have none; clears their requests.
pub fn take_wanted() -> Vec<pg_sys::Oid> {
    let mut shared = SHARED.exclusive();
    shared
        .slots
        .iter_mut()
        .filter(|s| s.database != 0 && s.wanted && s.pid == 0)
        .map(|s| {
            s.wanted = false;
            pg_sys::Oid::from(s.database)
        })
        .collect()
}

/// Records this process as the worker of `database`; false if another worker has it.
pub fn attach_worker(database: pg_sys::Oid) -> bool {
    let mut shared = SHARED.exclusive();
    // SAFETY: reads this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    match slot_of(&mut shared.slots, database.to_u32(), true) {
        Some(slot) if slot.pid == 0 || slot.pid == pid => {
            slot.pid = pid;
            slot.latch = my_latch();
            slot.wanted = false;
            slot.stopping = false;
            true
        }
        _ => false,
    }
}

/// Called by a worker before it claims: commits from now on wake it again. `paused` says
/// whether it sends at all (a paused worker is not woken by commits).
pub fn begin_claim(database: pg_sys::Oid, paused: bool) {
    let mut shared = SHARED.exclusive();
    if let Some(slot) = slot_of(&mut shared.slots, database.to_u32(), false) {
        slot.woken = false;
        slot.paused = paused;
    }
}

/// Clears this worker's slot. With `restart`, the launcher starts a new worker (unless the
/// database is being dropped); without, the slot is freed until the next request.
pub fn detach_worker(database: pg_sys::Oid, restart: bool) {
    let launcher = {
        let mut shared = SHARED.exclusive();
        let launcher = shared.launcher_latch;
        let Some(slot) = slot_of(&mut shared.slots, database.to_u32(), false) else {
            return;
        };
        let wanted = restart && !slot.stopping;
        *slot = Slot {
            database: if wanted { slot.database } else { 0 },
            wanted,
            ..Slot::default()
        };
        launcher
    };
    set_latch(launcher);
}

/// Stops the worker of `database`, if one runs, so that DROP DATABASE is not blocked by its
/// connection; returns its pid. It will not be restarted.
pub fn stop_worker(database: pg_sys::Oid) -> Option<i32> {
    if !available() {
        return None;
    }
    let mut shared = SHARED.exclusive();
    let slot = slot_of(&mut shared.slots, database.to_u32(), false)?;
    slot.stopping = true;
    slot.wanted = false;
    (slot.pid != 0).then_some(slot.pid)
}

/// Whether a worker still runs for `database`.
pub fn worker_running(database: pg_sys::Oid) -> bool {
    SHARED
        .share()
        .slots
        .iter()
        .any(|s| s.database == database.to_u32() && s.pid != 0)
}
