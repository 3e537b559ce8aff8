//! New rows: queue rows in state `new`, which no claim has seen yet and which are in no index
//! (an index entry would cost every capturing transaction an index insert).
//!
//! **Invariant: every committed new row is announced to its worker or found by a sweep.** A
//! committing transaction announces the rows it wrote ([`Announcement`]: where the row lies
//! and how many notifications it holds) through shared memory (`deliver::wake`); the worker
//! keeps what it was told in [`NewRows`] and offers those rows to its claims, which take them
//! at their addresses. A row a claim cannot take yet (its message's connections busy, its
//! endpoint failing) is moved into the queue's index (state `queued`, [`admit`]), where claims
//! find due rows. The worker sweeps the queue for new rows instead of trusting what it was
//! told when it starts, when more were announced than shared memory holds, while prepared
//! transactions (whose commit announces nothing) wait, after the queue was rewritten, and
//! every [`FULL_SWEEP_INTERVAL`] whatever it was told.
//!
//! The index's predicate, `state <> 'new'` (sql/schema.sql), is what leaves new rows out; the
//! queue's insert recognises that index by it ([`NOT_NEW`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use super::plans::{kept_update, ADMIT};
use crate::error::Result;

/// The predicate of the queue's index, `state <> 'new'`, as PostgreSQL deparses it.
pub const NOT_NEW: &str = "(state <> 'new'::text)";

/// Where a queue row lies: its ctid packed as `block << 16 | offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowAddress(u64);

impl RowAddress {
    /// The address of the row at `tid`.
    pub fn of(tid: pg_sys::ItemPointerData) -> RowAddress {
        let (block, offset) = pgrx::itemptr::item_pointer_get_both(tid);
        RowAddress((u64::from(block) << 16) | u64::from(offset))
    }

    /// The ctid of the row at this address.
    pub fn tid(self) -> pg_sys::ItemPointerData {
        let mut tid = pg_sys::ItemPointerData::default();
        pgrx::itemptr::item_pointer_set_all(&mut tid, self.block(), self.0 as u16);
        tid
    }

    /// The address of place `offset` of `block`.
    pub fn at(block: u32, offset: u16) -> RowAddress {
        RowAddress((u64::from(block) << 16) | u64::from(offset))
    }

    /// The block the row lies in.
    pub fn block(self) -> u32 {
        (self.0 >> 16) as u32
    }

    /// The first place of `block`.
    fn start_of(block: u32) -> RowAddress {
        RowAddress::at(block, 0)
    }
}

/// What a committing transaction tells its worker of a new row: its address and, in the top 16
/// bits, how many notifications it holds (so that a claim is offered as many as it can take).
/// Shared memory carries it as a plain `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announcement(u64);

impl Announcement {
    /// The announcement of the row at `tid`, holding `notifications`.
    pub fn new(tid: pg_sys::ItemPointerData, notifications: usize) -> Announcement {
        Announcement(RowAddress::of(tid).0 | ((notifications.min(0xFFFF) as u64) << 48))
    }

    pub fn from_raw(raw: u64) -> Announcement {
        Announcement(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    pub fn address(self) -> RowAddress {
        RowAddress(self.0 & ((1 << 48) - 1))
    }

    pub fn notifications(self) -> usize {
        (self.0 >> 48) as usize
    }
}

/// Moves the new rows at `addresses` into the due index (state `queued`), so that claims find
/// them: those a claim cannot take while their message's connections are busy. Returns the
/// addresses of new rows another transaction has locked, to be tried again.
pub fn admit(addresses: &[RowAddress]) -> Result<Vec<RowAddress>> {
    let tids = tids_at(addresses);
    Spi::connect_mut(|client| {
        let rows = kept_update(
            &ADMIT,
            client,
            "WITH found AS MATERIALIZED (
                 SELECT ctid FROM outbound_msg.queue WHERE ctid = ANY ($1) AND state = 'new'),
             locked AS (
                 SELECT ctid FROM outbound_msg.queue
                  WHERE ctid = ANY (ARRAY(SELECT ctid FROM found)) AND state = 'new'
                    FOR UPDATE SKIP LOCKED),
             admitted AS (
                 UPDATE outbound_msg.queue q SET state = 'queued'
                   FROM locked l
                  WHERE q.ctid = l.ctid
                 RETURNING l.ctid)
             SELECT f.ctid FROM found f WHERE f.ctid NOT IN (SELECT ctid FROM admitted)",
            &[pg_sys::TIDARRAYOID],
            None,
            &[tids.into()],
        )?;
        rows.map(|row| Ok(RowAddress::of(row.get(1)?.unwrap_or_default())))
            .collect()
    })
}

/// A new row found at an address: its message, and how many notifications it holds.
pub struct NewRow {
    pub address: RowAddress,
    pub message_id: i64,
    pub size: usize,
}

/// Those of the rows at `addresses` that are still new (no claim took them).
pub fn still_new(addresses: &[RowAddress]) -> Result<Vec<NewRow>> {
    if addresses.is_empty() {
        // Most steps offer nothing: no query then.
        return Ok(Vec::new());
    }
    let tids = tids_at(addresses);
    Spi::connect(|client| {
        client
            .select(
                "SELECT ctid, message_id, cardinality(record_ids) FROM outbound_msg.queue
                  WHERE ctid = ANY ($1) AND state = 'new'",
                None,
                &[tids.into()],
            )?
            .map(|row| {
                Ok(NewRow {
                    address: RowAddress::of(row.get(1)?.unwrap_or_default()),
                    message_id: row.get(2)?.unwrap_or_default(),
                    size: row.get::<i32>(3)?.unwrap_or(1).max(1) as usize,
                })
            })
            .collect()
    })
}

/// [`Announcement`]s of at most `limit` new rows, in the order they lie, from the start of
/// `block` on; and the block to go on from when there were `limit` (`None`: none are left).
pub fn sweep(block: u32, limit: usize) -> Result<(Vec<Announcement>, Option<u32>)> {
    let found: Vec<Announcement> = Spi::connect(|client| {
        client
            .select(
                "SELECT ctid, cardinality(record_ids) FROM outbound_msg.queue
                  WHERE ctid >= $1 AND state = 'new' LIMIT $2",
                None,
                &[
                    RowAddress::start_of(block).tid().into(),
                    (limit as i64).into(),
                ],
            )?
            .map(|row| {
                let size = row.get::<i32>(2)?.unwrap_or(1).max(1) as usize;
                Ok(Announcement::new(row.get(1)?.unwrap_or_default(), size))
            })
            .collect::<Result<_>>()
    })?;
    let more_from = (found.len() >= limit)
        .then(|| found.iter().map(|a| a.address().block()).max())
        .flatten();
    Ok((found, more_from))
}

/// The rows at `addresses` as ctids, a query argument.
pub fn tids_at(addresses: &[RowAddress]) -> Vec<pg_sys::ItemPointerData> {
    addresses.iter().map(|address| address.tid()).collect()
}

/// The queue's storage (its relfilenode), locked for the rest of the transaction. VACUUM FULL,
/// CLUSTER and TRUNCATE give it a new one and move every row: row addresses from before no
/// longer hold.
pub fn storage() -> Result<u32> {
    let relid = crate::relations::required_relation(c"queue")?;
    // SAFETY: opens and locks an existing relation to read its relcache entry.
    unsafe {
        let relation = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let storage = crate::pgver::storage_number(relation);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        Ok(storage)
    }
}

/// Whether a prepared transaction of this database waits for COMMIT PREPARED.
pub fn transactions_prepared() -> Result<bool> {
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_prepared_xacts
                         WHERE database = current_database())",
    )?
    .unwrap_or(false))
}

/// Most new groups a sweep lists in one step.
const SWEEP_STEP: usize = 2000;
/// Most new groups kept listed; more go into the index.
const MOST_LISTED: usize = 10_000;
/// While prepared transactions wait, the queue is swept at most this often; new groups another
/// transaction had locked are tried again as often.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The queue is swept whole at least this often.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A new row the worker knows the address of.
#[derive(Clone, Copy)]
struct Listed {
    address: RowAddress,
    /// Its notifications.
    size: usize,
    /// Its message, once a claim looked the group up.
    message: Option<i64>,
}

impl Listed {
    fn announced(announcement: Announcement) -> Listed {
        Listed {
            address: announcement.address(),
            size: announcement.notifications().max(1),
            message: None,
        }
    }

    fn of(group: &NewRow) -> Listed {
        Listed {
            address: group.address,
            size: group.size,
            message: Some(group.message_id),
        }
    }
}

/// New groups offered to a claim.
#[derive(Default)]
pub struct Offer {
    pub addresses: Vec<RowAddress>,
    /// Their messages, as far as known.
    pub messages: HashSet<i64>,
    /// Whether the message of some is not known.
    pub unknown_messages: bool,
}

/// What the worker knows of new groups not in the index.
#[derive(Clone)]
pub struct NewRows {
    /// In the order claims are offered them.
    listed: Vec<Listed>,
    /// The block a sweep goes on from; `None`: no sweep under way.
    sweep_from: Option<u32>,
    /// Prepared transactions may hold new groups: sweep until none is left.
    prepared: bool,
    last_prepared_sweep: Option<Instant>,
    /// When the last sweep from the queue's start began.
    last_full_sweep: Instant,
    /// The last sweep listed groups no claim was offered yet: claim again at once.
    just_listed: bool,
    /// The queue's storage the addresses are in (see `storage`).
    storage: u32,
}

impl NewRows {
    /// As a worker starts: every new group is to be found by a sweep.
    pub fn at_start() -> NewRows {
        NewRows {
            listed: Vec::new(),
            sweep_from: Some(0),
            prepared: true,
            last_prepared_sweep: None,
            last_full_sweep: Instant::now(),
            just_listed: false,
            storage: 0,
        }
    }

    /// Notes that the queue's storage is `storage` (committed: read under a lock that waits for
    /// a rewrite): nothing listed holds when the queue was rewritten since (VACUUM FULL moves
    /// every row), and a sweep finds them all.
    pub fn set_storage(&mut self, storage: u32) {
        if self.storage != storage {
            self.storage = storage;
            self.listed.clear();
            self.sweep_from = Some(0);
        }
    }

    /// Adds what committing transactions announced since the worker's last claim. Past
    /// [`MOST_LISTED`] (a worker paused for long is told of every commit), the rest is left to
    /// a sweep.
    pub fn learn(&mut self, announced: impl IntoIterator<Item = Announcement>, sweep: bool) {
        self.listed
            .extend(announced.into_iter().map(Listed::announced));
        if sweep || self.listed.len() > MOST_LISTED {
            self.listed.truncate(MOST_LISTED);
            self.sweep_from = Some(0);
        }
    }

    /// Before a claim of at most `notifications` that only the messages `allowed` (sorted) may
    /// take from, when more is listed than it could take: looks up the message of each listed
    /// group not looked up yet, forgets those no longer new, and moves those of messages that
    /// may take none into the index. Otherwise a claim would be offered, step after step, the
    /// groups of messages that cannot take them (their endpoint failing), listed before those
    /// of a healthy one. `always`: whatever is listed, so that the claim knows which messages
    /// it is offered groups of. In the claim's transaction; the caller keeps the result if it
    /// commits.
    pub fn sort_out(&mut self, notifications: usize, allowed: &[i64], always: bool) -> Result<()> {
        if !always && self.listed.iter().map(|group| group.size).sum::<usize>() <= notifications {
            return Ok(());
        }
        let unknown: Vec<RowAddress> = self
            .listed
            .iter()
            .filter(|group| group.message.is_none())
            .map(|group| group.address)
            .collect();
        if !unknown.is_empty() {
            let found: HashMap<RowAddress, i64> = still_new(&unknown)?
                .iter()
                .map(|group| (group.address, group.message_id))
                .collect();
            self.listed.retain_mut(|group| {
                if group.message.is_none() {
                    group.message = found.get(&group.address).copied();
                }
                group.message.is_some()
            });
        }
        let (waiting, kept): (Vec<Listed>, Vec<Listed>) =
            self.listed.drain(..).partition(|group| {
                group
                    .message
                    .is_some_and(|m| allowed.binary_search(&m).is_err())
            });
        self.listed = kept;
        let to_index: Vec<RowAddress> = waiting.iter().map(|group| group.address).collect();
        self.index(&to_index)
    }

    /// The listed groups to offer a claim of at most `notifications`, of which each message
    /// may take what `allowances` says: the first ones, as many as could fill it.
    pub fn offer(&self, notifications: usize, allowances: &[(i64, usize)]) -> Offer {
        let mut room = notifications;
        let mut rooms: HashMap<i64, usize> = allowances.iter().copied().collect();
        let mut offer = Offer::default();
        for group in &self.listed {
            if room == 0 {
                break;
            }
            match group.message {
                Some(message) => {
                    let message_room = rooms.entry(message).or_default();
                    if *message_room == 0 {
                        continue;
                    }
                    *message_room = message_room.saturating_sub(group.size);
                    offer.messages.insert(message);
                }
                None => offer.unknown_messages = true,
            }
            room = room.saturating_sub(group.size);
            offer.addresses.push(group.address);
        }
        offer
    }

    /// Notes what is left to find after a claim that was offered the groups at `offered` (see
    /// [`offer`]) while only the messages `allowed` (sorted) could take any: the offered groups
    /// it left go to the back of the list, or into the index when their message could take none
    /// (its connections busy, its endpoint failing); then the sweep goes on, and
    /// `prepared_since` (a prepared transaction wrote groups since the last call) is taken into
    /// account. In the claim's transaction; the caller keeps the result if it commits.
    ///
    /// [`offer`]: Self::offer
    pub fn after_claim(
        &mut self,
        offered: &[RowAddress],
        allowed: &[i64],
        prepared_since: bool,
    ) -> Result<()> {
        let offered_set: HashSet<RowAddress> = offered.iter().copied().collect();
        self.listed
            .retain(|group| !offered_set.contains(&group.address));
        let (waiting, kept): (Vec<_>, Vec<_>) = still_new(offered)?
            .into_iter()
            .partition(|group| allowed.binary_search(&group.message_id).is_err());
        let to_index: Vec<RowAddress> = waiting.iter().map(|group| group.address).collect();
        self.listed.extend(kept.iter().map(Listed::of));
        if self.listed.len() > MOST_LISTED {
            let excess: Vec<RowAddress> = self
                .listed
                .drain(MOST_LISTED..)
                .map(|g| g.address)
                .collect();
            self.index(&excess)?;
        }
        self.index(&to_index)?;

        if self.prepared || prepared_since {
            // Checked after the mark was taken, and swept after the check: a prepared
            // transaction either still waits here, or its groups are visible to the sweep.
            self.prepared = transactions_prepared()?;
            let due = self
                .last_prepared_sweep
                .is_none_or(|last| last.elapsed() >= RETRY_INTERVAL);
            if due || !self.prepared {
                self.sweep_from = Some(0);
                self.last_prepared_sweep = Some(Instant::now());
            }
        }
        if self.sweep_from.is_none() && self.last_full_sweep.elapsed() >= FULL_SWEEP_INTERVAL {
            self.sweep_from = Some(0);
        }
        if self.sweep_from == Some(0) {
            self.last_full_sweep = Instant::now();
        }
        // A sweep lists more only as claims take what it listed.
        self.just_listed = false;
        if let Some(block) = self.sweep_from.filter(|_| self.listed.len() < SWEEP_STEP) {
            let (found, more_from) = sweep(block, SWEEP_STEP)?;
            self.just_listed = !found.is_empty();
            self.listed.extend(found.into_iter().map(Listed::announced));
            self.sweep_from = more_from;
        }
        Ok(())
    }

    /// Moves the groups at `addresses` into the index; those another transaction has locked
    /// stay listed.
    fn index(&mut self, addresses: &[RowAddress]) -> Result<()> {
        if !addresses.is_empty() {
            let locked = admit(addresses)?;
            self.listed.extend(locked.into_iter().map(|address| Listed {
                address,
                size: 1,
                message: None,
            }));
        }
        Ok(())
    }

    /// What is kept when [`after_claim`](Self::after_claim) failed or its transaction did not
    /// commit: everything found so far, to be offered again.
    pub fn kept_after_failure(&self, prepared_since: bool) -> NewRows {
        let mut kept = self.clone();
        kept.prepared |= prepared_since;
        kept
    }

    /// Whether nothing is left to find: nothing listed, no sweep under way, no prepared
    /// transaction that may hold new groups.
    pub fn settled(&self) -> bool {
        self.listed.is_empty() && self.sweep_from.is_none() && !self.prepared
    }

    /// How long the worker may sleep at most before looking again: not at all while a sweep
    /// is under way or has just listed groups, a little while groups are listed or prepared
    /// transactions wait.
    pub fn longest_sleep(&self) -> Option<Duration> {
        if self.sweep_from.is_some() || self.just_listed {
            Some(Duration::ZERO)
        } else if self.prepared || !self.listed.is_empty() {
            Some(RETRY_INTERVAL)
        } else {
            Some(FULL_SWEEP_INTERVAL.saturating_sub(self.last_full_sweep.elapsed()))
        }
    }
}
