//! Shared memory of the launcher and the per-database workers: one slot per database being
//! served or waiting to be, holding the worker's pid and latch, a flag asking the launcher for
//! a worker (and since when, so that waiting databases are served in turn), and the queue rows
//! committed since the worker last looked (see [`FreshRows`]).
//!
//! At most `outbound_msg.max_workers` workers run at once; the launcher starts the databases
//! that have waited longest first, and a worker gives its place up when others wait (see
//! `deliver::mod`).
//!
//! Latches live in the shared PGPROC array, so a latch's address is valid in every process of
//! the cluster. Exists only when the library is preloaded; [`available`] says so, and every
//! other function does nothing without it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use pgrx::lwlock::PgLwLock;
use pgrx::pg_shmem_init;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;

/// Most databases served or waiting at once.
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
    /// When it became wanted: a number from [`Shared::next_turn`], smaller is earlier.
    wanted_turn: u64,
    /// Since when (Unix milliseconds) it waits for a worker.
    wanted_since_ms: u64,
    /// The launcher started a worker for it (at this time, Unix milliseconds) that has not
    /// attached yet; 0 when none.
    starting_since_ms: u64,
    /// A start failed since its worker last attached: no background worker process was free.
    short_of_processes: bool,
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

    /// A worker runs for it or is being started: it takes one of `max_workers`.
    fn takes_a_place(&self) -> bool {
        self.database != 0 && (self.pid != 0 || self.starting_since_ms != 0)
    }

    /// It wants a worker and none is running or being started.
    fn waits(&self) -> bool {
        self.database != 0 && self.wanted && self.pid == 0 && self.starting_since_ms == 0
    }

    /// It waits, and only a worker that leaves can make room for it: its place is taken, or
    /// no background worker process was free.
    fn waits_for_a_place(&self, places_taken: bool) -> bool {
        self.waits() && (places_taken || self.short_of_processes)
    }
}

struct Shared {
    launcher_latch: usize,
    slots: [Slot; MAX_DATABASES],
    /// Turns handed out to wanted databases, in order.
    next_turn: u64,
    /// A database asked for a worker when no slot was free: the launcher asks every database
    /// again once slots free up.
    overflowed: bool,
}

impl Shared {
    /// The slot of `database`, if it has one.
    fn slot(&self, database: pg_sys::Oid) -> Option<&Slot> {
        self.slots.iter().find(|s| s.database == database.to_u32())
    }

    /// How many of `max_workers` places are taken (see [`Slot::takes_a_place`]).
    fn places_taken(&self) -> usize {
        self.slots.iter().filter(|s| s.takes_a_place()).count()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            launcher_latch: 0,
            slots: std::array::from_fn(|_| Slot::default()),
            next_turn: 0,
            overflowed: false,
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
        let mut guard = SHARED.exclusive();
        let shared = &mut *guard;
        let launcher = shared.launcher_latch;
        let turn = shared.next_turn;
        match slot_of(&mut shared.slots, database.to_u32(), true) {
            Some(slot) if slot.needs_no_wake() => 0,
            Some(slot) if slot.latch != 0 => {
                slot.woken = true;
                slot.latch
            }
            Some(slot) => {
                if !slot.wanted {
                    want(slot, turn);
                    shared.next_turn += 1;
                }
                launcher
            }
            None => {
                // The launcher asks every database again once a minute meanwhile.
                shared.overflowed = true;
                0
            }
        }
    };
    set_latch(latch);
}

/// Marks `slot` as wanting a worker, its turn `turn`.
fn want(slot: &mut Slot, turn: u64) {
    slot.wanted = true;
    slot.wanted_turn = turn;
    slot.wanted_since_ms = now_ms();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// How long a started worker may take to attach before its start counts as failed.
const START_WAIT_MS: u64 = 30_000;

/// The databases a worker should be started for now: those that have waited longest, as many
/// as `max_workers` leaves room for beside the workers running or starting. Marks them
/// starting.
pub fn to_start(max_workers: usize) -> Vec<pg_sys::Oid> {
    let mut shared = SHARED.exclusive();
    let now = now_ms();
    for slot in shared.slots.iter_mut() {
        if slot.starting_since_ms != 0 && now.saturating_sub(slot.starting_since_ms) > START_WAIT_MS
        {
            slot.starting_since_ms = 0;
            if slot.stopping && !slot.wanted {
                // Its database was dropped before the worker could attach: nothing is left.
                *slot = Slot::default();
            }
        }
    }
    let busy = shared.places_taken();
    let mut waiting: Vec<&mut Slot> = shared.slots.iter_mut().filter(|s| s.waits()).collect();
    waiting.sort_unstable_by_key(|s| s.wanted_turn);
    waiting
        .into_iter()
        .take(max_workers.saturating_sub(busy))
        .map(|slot| {
            slot.starting_since_ms = now;
            pg_sys::Oid::from(slot.database)
        })
        .collect()
}

/// The launcher did not start a worker for `database` (too soon after the last, or
/// `short_of_processes`: no background worker process was free): it waits on.
pub fn start_failed(database: pg_sys::Oid, short_of_processes: bool) {
    let mut shared = SHARED.exclusive();
    if let Some(slot) = slot_of(&mut shared.slots, database.to_u32(), false) {
        slot.starting_since_ms = 0;
        slot.short_of_processes |= short_of_processes;
    }
}

/// Whether a database asked for a worker when no slot was free (clears the mark).
pub fn take_overflowed() -> bool {
    std::mem::take(&mut SHARED.exclusive().overflowed)
}

/// Whether another database waits for a worker that only a worker leaving can make room for
/// (see [`Slot::waits_for_a_place`]). While there is room the launcher starts the waiting
/// database's worker beside this one, which need not leave.
pub fn others_waiting(database: pg_sys::Oid, max_workers: usize) -> bool {
    let shared = SHARED.share();
    let taken = shared.places_taken() >= max_workers;
    shared
        .slots
        .iter()
        .any(|s| s.database != database.to_u32() && s.waits_for_a_place(taken))
}

/// One database's slot, as `outbound_msg.workers` shows it.
pub struct SlotState {
    pub database: pg_sys::Oid,
    pub pid: i32,
    /// Unix milliseconds since which it waits for a worker, if it does.
    pub waiting_since_ms: Option<u64>,
}

/// Every database served or waiting.
pub fn slots() -> Vec<SlotState> {
    if !available() {
        return Vec::new();
    }
    SHARED
        .share()
        .slots
        .iter()
        .filter(|s| s.database != 0)
        .map(|s| SlotState {
            database: pg_sys::Oid::from(s.database),
            pid: s.pid,
            waiting_since_ms: (s.wanted && s.pid == 0).then_some(s.wanted_since_ms),
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
            slot.starting_since_ms = 0;
            slot.short_of_processes = false;
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
/// database is being dropped), in its turn after the databases already waiting; without, the
/// slot is freed until the next request, unless a commit asked for delivery since the worker
/// last claimed (it would be lost otherwise).
pub fn detach_worker(database: pg_sys::Oid, restart: bool) {
    let launcher = {
        let mut guard = SHARED.exclusive();
        let shared = &mut *guard;
        let launcher = shared.launcher_latch;
        let turn = shared.next_turn;
        let Some(slot) = slot_of(&mut shared.slots, database.to_u32(), false) else {
            return;
        };
        let asked = slot.woken || slot.fresh.count.load(Ordering::SeqCst) > 0;
        let wanted = (restart || asked) && !slot.stopping;
        *slot = Slot {
            database: if wanted { slot.database } else { 0 },
            ..Slot::default()
        };
        if wanted {
            want(slot, turn);
            shared.next_turn += 1;
        }
        launcher
    };
    set_latch(launcher);
}

/// Stops the worker of `database`, if one runs, so that DROP DATABASE is not blocked by its
/// connection; returns its pid. It will not be restarted. A slot with no worker running or
/// starting is freed at once: no worker would ever leave it.
pub fn stop_worker(database: pg_sys::Oid) -> Option<i32> {
    if !available() {
        return None;
    }
    let mut shared = SHARED.exclusive();
    let slot = slot_of(&mut shared.slots, database.to_u32(), false)?;
    if !slot.takes_a_place() {
        *slot = Slot::default();
        return None;
    }
    slot.stopping = true;
    slot.wanted = false;
    (slot.pid != 0).then_some(slot.pid)
}

/// Whether a worker still runs for `database`.
pub fn worker_running(database: pg_sys::Oid) -> bool {
    SHARED.share().slot(database).is_some_and(|s| s.pid != 0)
}
