//! Shared memory of the launcher and the per-database workers: one slot per database being
//! served, holding the worker's pid and latch, a flag asking the launcher for a worker, and the
//! queue rows committed since the worker last looked (see [`FreshRows`]).
//!
//! Latches live in the shared PGPROC array, so a latch's address is valid in every process of
//! the cluster. Exists only when the library is preloaded; [`available`] says so, and every
//! other function does nothing without it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use pgrx::lwlock::PgLwLock;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// Most databases served at once.
pub const MAX_DATABASES: usize = 64;

#[derive(Default)]
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
    fresh: FreshRows,
}

/// Most fresh rows a slot holds between two looks of its worker; past that, the worker
/// looks through the whole queue instead.
const FRESH_CAPACITY: usize = 2048;

/// Where the queue rows committed since the worker's last look are. Fresh rows are not in the
/// queue's index (they would cost every capturing transaction an index insert): the worker
/// finds them here, or, when more came than fit, by a sweep of the queue.
///
/// Committing backends add rows under the shared lock (several at once: a place is taken with
/// an atomic add); the worker takes them all under the exclusive lock, when no one adds.
struct FreshRows {
    /// `queue::announcement`s of the rows, in places `0..count`.
    rows: [AtomicU64; FRESH_CAPACITY],
    count: AtomicU32,
    /// Some rows did not fit: the worker must sweep the queue.
    overflowed: AtomicBool,
    /// A prepared transaction wrote rows: visible once it commits, elsewhere, unannounced.
    prepared: AtomicBool,
}

impl Default for FreshRows {
    fn default() -> Self {
        FreshRows {
            rows: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU32::new(0),
            overflowed: AtomicBool::new(false),
            prepared: AtomicBool::new(false),
        }
    }
}

impl FreshRows {
    fn add(&self, rows: &[u64]) {
        let start = self.count.fetch_add(rows.len() as u32, Ordering::SeqCst) as usize;
        let free = FRESH_CAPACITY.saturating_sub(start);
        if rows.len() > free {
            self.overflowed.store(true, Ordering::SeqCst);
        }
        for (place, &row) in self
            .rows
            .iter()
            .skip(start)
            .zip(&rows[..rows.len().min(free)])
        {
            place.store(row, Ordering::SeqCst);
        }
    }

    /// Takes every row added; only under the exclusive lock.
    fn take(&self) -> Fresh {
        let count = (self.count.swap(0, Ordering::SeqCst) as usize).min(FRESH_CAPACITY);
        Fresh {
            rows: self.rows[..count]
                .iter()
                .map(|row| row.load(Ordering::SeqCst))
                .collect(),
            sweep: self.overflowed.swap(false, Ordering::SeqCst),
        }
    }
}

/// What a worker learns of fresh rows when it begins a claim.
pub struct Fresh {
    /// `queue::announcement`s of the rows.
    pub rows: Vec<u64>,
    /// Not every fresh row is listed: the queue must be swept.
    pub sweep: bool,
}

impl Slot {
    /// A worker runs and was already woken since its last claim, or is paused.
    fn needs_no_wake(&self) -> bool {
        self.latch != 0 && (self.woken || self.paused)
    }
}

struct Shared {
    launcher_latch: usize,
    slots: [Slot; MAX_DATABASES],
}

impl Shared {
    /// The slot of `database`, if it has one.
    fn slot(&self, database: pg_sys::Oid) -> Option<&Slot> {
        self.slots.iter().find(|s| s.database == database.to_u32())
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_latch: 0,
            slots: std::array::from_fn(|_| Slot::default()),
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

/// Asks for delivery in `database`: hands its worker the addresses of the queue rows just
/// committed (`queue::announcement`s), and wakes it, or has the launcher start one.
pub fn request_delivery(database: pg_sys::Oid, fresh_rows: &[u64]) {
    if !available() {
        return;
    }
    // Most commits find the worker already woken (or paused): a shared lock tells them so
    // without making concurrent commits wait for one another. A worker that is not running
    // yet sweeps the queue when it starts: the rows need not be kept for it.
    let settled = {
        let shared = SHARED.share();
        let slot = shared.slot(database);
        if let Some(slot) = slot.filter(|s| s.latch != 0) {
            slot.fresh.add(fresh_rows);
        }
        slot.is_some_and(Slot::needs_no_wake)
    };
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
            // The worker sweeps the queue first: what was announced before is in the sweep.
            slot.fresh.take();
            true
        }
        _ => false,
    }
}

/// Called by a worker before it claims: commits from now on wake it again. `paused` says
/// whether it sends at all (a paused worker is not woken by commits). Returns the rows
/// committed since the last call.
pub fn begin_claim(database: pg_sys::Oid, paused: bool) -> Fresh {
    let mut shared = SHARED.exclusive();
    match slot_of(&mut shared.slots, database.to_u32(), false) {
        Some(slot) => {
            slot.woken = false;
            slot.paused = paused;
            slot.fresh.take()
        }
        None => Fresh {
            rows: Vec::new(),
            sweep: true,
        },
    }
}

/// Records that a prepared transaction of `database` wrote queue rows: its worker sweeps the
/// queue until no prepared transaction is left (their commit announces nothing).
pub fn rows_prepared(database: pg_sys::Oid) {
    if !available() {
        return;
    }
    if let Some(slot) = SHARED.share().slot(database) {
        slot.fresh.prepared.store(true, Ordering::SeqCst);
    }
}

/// Takes the mark of [`rows_prepared`]: whether a prepared transaction wrote rows since.
pub fn take_prepared(database: pg_sys::Oid) -> bool {
    SHARED
        .share()
        .slot(database)
        .is_some_and(|s| s.fresh.prepared.swap(false, Ordering::SeqCst))
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
    SHARED.share().slot(database).is_some_and(|s| s.pid != 0)
}
