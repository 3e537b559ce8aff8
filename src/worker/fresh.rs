//! How a worker finds new groups, which are in no index: committing transactions list where
//! they wrote them ([`super::wake`]), and a claim takes them from there. Only those a claim
//! leaves while their message's connections are all busy go into the queue's index, to wait
//! there. The worker sweeps the whole queue for new groups when it starts, when more came than
//! the shared memory holds, while prepared transactions (whose commit lists nothing) wait, and
//! every [`FULL_SWEEP_INTERVAL`] whatever it was told: under a heavy concurrent load (eight
//! pgbench clients committing beside a worker that delivers and vacuums) some new groups were
//! neither listed nor swept until the worker restarted, and until that is understood a periodic
//! sweep bounds how long any can wait.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::shmem::Fresh;
use crate::error::Result;
use crate::queue;

/// Most new groups a sweep lists in one step.
const SWEEP_STEP: usize = 2000;
/// Most new groups kept listed; more go into the index.
const MOST_LISTED: usize = 10_000;
/// While prepared transactions wait, the queue is swept at most this often; new groups another
/// transaction had locked are tried again as often.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The queue is swept whole at least this often.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A new group the worker knows the address of (`block << 16 | offset`).
#[derive(Clone, Copy)]
struct Listed {
    address: u64,
    /// Its notifications.
    size: usize,
    /// Its message, once a claim looked the group up.
    message: Option<i64>,
}

impl Listed {
    fn announced(announcement: u64) -> Listed {
        let (address, size) = queue::announced(announcement);
        Listed {
            address,
            size: size.max(1),
            message: None,
        }
    }

    fn of(group: &queue::NewGroup) -> Listed {
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
    pub addresses: Vec<u64>,
    /// Their messages, as far as known.
    pub messages: HashSet<i64>,
    /// Whether the message of some is not known.
    pub unknown_messages: bool,
}

/// What the worker knows of new groups not in the index.
#[derive(Clone)]
pub struct NewGroupsFound {
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
    /// The queue's storage the addresses are in (see `queue::storage`).
    storage: u32,
}

impl NewGroupsFound {
    /// As a worker starts: every new group is to be found by a sweep.
    pub fn at_start() -> NewGroupsFound {
        NewGroupsFound {
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
    pub fn learn(&mut self, fresh: Fresh) {
        self.listed
            .extend(fresh.rows.into_iter().map(Listed::announced));
        if fresh.sweep || self.listed.len() > MOST_LISTED {
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
        let unknown: Vec<u64> = self
            .listed
            .iter()
            .filter(|group| group.message.is_none())
            .map(|group| group.address)
            .collect();
        if !unknown.is_empty() {
            let found: HashMap<u64, i64> = queue::still_new(&unknown)?
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
        let to_index: Vec<u64> = waiting.iter().map(|group| group.address).collect();
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
        offered: &[u64],
        allowed: &[i64],
        prepared_since: bool,
    ) -> Result<()> {
        let next = self;
        let offered_set: HashSet<u64> = offered.iter().copied().collect();
        next.listed
            .retain(|group| !offered_set.contains(&group.address));
        let (waiting, kept): (Vec<_>, Vec<_>) = queue::still_new(offered)?
            .into_iter()
            .partition(|group| allowed.binary_search(&group.message_id).is_err());
        let to_index: Vec<u64> = waiting.iter().map(|group| group.address).collect();
        next.listed.extend(kept.iter().map(Listed::of));
        if next.listed.len() > MOST_LISTED {
            let excess: Vec<u64> = next
                .listed
                .drain(MOST_LISTED..)
                .map(|g| g.address)
                .collect();
            next.index(&excess)?;
        }
        next.index(&to_index)?;

        if next.prepared || prepared_since {
            // Checked after the mark was taken, and swept after the check: a prepared
            // transaction either still waits here, or its groups are visible to the sweep.
            next.prepared = queue::transactions_prepared()?;
            let due = next
                .last_prepared_sweep
                .is_none_or(|last| last.elapsed() >= RETRY_INTERVAL);
            if due || !next.prepared {
                next.sweep_from = Some(0);
                next.last_prepared_sweep = Some(Instant::now());
            }
        }
        if next.sweep_from.is_none() && next.last_full_sweep.elapsed() >= FULL_SWEEP_INTERVAL {
            next.sweep_from = Some(0);
        }
        if next.sweep_from == Some(0) {
            next.last_full_sweep = Instant::now();
        }
        // A sweep lists more only as claims take what it listed.
        next.just_listed = false;
        if let Some(block) = next.sweep_from.filter(|_| next.listed.len() < SWEEP_STEP) {
            let (found, more_from) = queue::sweep(block, SWEEP_STEP)?;
            next.just_listed = !found.is_empty();
            next.listed.extend(found.into_iter().map(Listed::announced));
            next.sweep_from = more_from;
        }
        Ok(())
    }

    /// Moves the groups at `addresses` into the index; those another transaction has locked
    /// stay listed.
    fn index(&mut self, addresses: &[u64]) -> Result<()> {
        if !addresses.is_empty() {
            let locked = queue::admit(addresses)?;
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
    pub fn kept_after_failure(&self, prepared_since: bool) -> NewGroupsFound {
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
