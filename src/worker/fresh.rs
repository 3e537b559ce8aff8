//! How a worker finds new groups, which are in no index: committing transactions list where
//! they wrote them ([`super::wake`]), and the worker moves those into the due index before it
//! claims. It sweeps the whole queue when it starts, when more rows came than the shared
//! memory holds, and while prepared transactions (whose commit lists nothing) wait.

use std::time::{Duration, Instant};


use super::shmem::Fresh;
use crate::error::Result;
use crate::queue::{self, NewGroups};

/// Most new groups a sweep moves into the index in one step.
const SWEEP_STEP: i64 = 2000;
/// While prepared transactions wait, the queue is swept at most this often; new groups another
/// transaction had locked are tried again as often.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// What the worker knows of new groups not yet in the index.
#[derive(Clone)]
pub struct NewGroupsFound {
    /// Addresses (`block << 16 | offset`) of new groups to move into the index.
    listed: Vec<u64>,
    /// The block a sweep goes on from; `None`: no sweep under way.
    sweep_from: Option<u32>,
    /// Prepared transactions may hold new groups: sweep until none is left.
    prepared: bool,
    last_prepared_sweep: Option<Instant>,
}

impl NewGroupsFound {
    /// As a worker starts: every new group is to be found by a sweep.
    pub fn at_start() -> NewGroupsFound {
        NewGroupsFound {
            listed: Vec::new(),
            sweep_from: Some(0),
            prepared: true,
            last_prepared_sweep: None,
        }
    }

    /// Adds what committing transactions announced since the worker's last claim.
    pub fn learn(&mut self, fresh: Fresh) {
        self.listed.extend(fresh.rows);
        if fresh.sweep {
            self.sweep_from = Some(0);
        }
    }

    /// Addresses of the new groups committing transactions listed, for a claim to take.
    pub fn listed(&self) -> &[u64] {
        &self.listed
    }

    /// Moves the new groups found (and not claimed) into the due index; `prepared_since` says whether a
    /// prepared transaction wrote groups since the last call. In a transaction; returns what
    /// is left to find, for the caller to keep if the transaction commits.
    pub fn admit(&self, prepared_since: bool) -> Result<NewGroupsFound> {
        let mut next = self.clone();
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
        if !next.listed.is_empty() {
            next.listed = queue::admit(NewGroups::Listed(&self.listed))?.locked;
        }
        if let Some(block) = next.sweep_from {
            let admitted = queue::admit(NewGroups::From {
                block,
                limit: SWEEP_STEP,
            })?;
            next.listed.extend(admitted.locked);
            next.sweep_from = admitted.sweep_from;
        }
        Ok(next)
    }

    /// What is kept when [`admit`](Self::admit) failed or its transaction did not commit:
    /// everything found so far, to be tried again.
    pub fn kept_after_failure(&self, prepared_since: bool) -> NewGroupsFound {
        let mut kept = self.clone();
        kept.prepared |= prepared_since;
        kept
    }

    /// How long the worker may sleep at most before looking again: not at all while a sweep
    /// is under way, a little while prepared transactions wait or new groups were locked.
    pub fn longest_sleep(&self) -> Option<Duration> {
        if self.sweep_from.is_some() {
            Some(Duration::ZERO)
        } else {
            (self.prepared || !self.listed.is_empty()).then_some(RETRY_INTERVAL)
        }
    }
}

