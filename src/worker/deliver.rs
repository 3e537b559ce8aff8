//! The delivery loop of a worker: record finished deliveries, claim due notifications for the
//! free request slots, hand them to the HTTP pool. Claims and outcomes each run in a short
//! transaction on the main thread; HTTP runs on the pool's threads, outside any transaction.
//!
//! A message may use at most half of the request slots (at least one), so a slow or dead
//! endpoint can never take them all: the others keep flowing while its requests time out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgrx::prelude::*;

use super::fresh::NewGroupsFound;
use super::pool::{Done, Job, Pool};
use super::shmem;
use crate::http::Limits;
use crate::ids::{salesforce_id, ACTION_PREFIX, NOTIFICATION_PREFIX, ORGANIZATION_PREFIX};
use crate::queue::{self, Batch, ClaimLimits};
use crate::retry::{backoff, Jitter};
use crate::soap::{self, Header, Notification};
use crate::tls::{self, Identity};
use crate::{certificates, guc, validate};

/// Largest listener response read.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// A lease outlasts the request's own timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Longest sleep when nothing is due. Commits wake the worker; this timed look only catches
/// what no commit announced (prepared transactions committed elsewhere).
pub const IDLE_WAIT: Duration = Duration::from_secs(10);

/// Delivers the queue of the worker's database.
pub struct Deliverer {
    pool: Pool,
    /// Batches in flight, per message.
    in_flight: HashMap<i64, usize>,
    derived_organization_id: Option<String>,
    jitter: Jitter,
    /// Batches refused without sending (endpoint no longer allowed), recorded next step.
    refused: Vec<Done>,
    /// The `outbound_msg.ca_file` the pool's roots were loaded for.
    roots_for: Option<Option<String>>,
    /// Client identities by certificate name, with the fingerprint they were loaded at.
    identities: HashMap<String, (String, Arc<Identity>)>,
    /// Groups claimed since the worker last vacuumed the queue: each leaves dead row versions.
    claimed_since_vacuum: usize,
    /// New groups (in no index) the worker knows of or still has to find, offered to claims.
    new_groups: NewGroupsFound,
}

/// Groups claimed after which the worker vacuums the queue itself, when nothing is in flight
/// (at four times as many, even with deliveries in flight).
const VACUUM_AFTER_GROUPS: usize = 20_000;

/// Settings read once per step, so a reload applies between steps.
struct Settings {
    batch_size: usize,
    max_connections: usize,
    limits: Limits,
    retry_min: Duration,
    retry_max: Duration,
    max_age: Duration,
}

impl Settings {
    fn current() -> Settings {
        Settings {
            batch_size: guc::batch_size(),
            max_connections: guc::max_connections(),
            limits: Limits {
                timeout: guc::timeout(),
                max_response_bytes: MAX_RESPONSE_BYTES,
            },
            retry_min: guc::retry_min_interval(),
            retry_max: guc::retry_max_interval(),
            max_age: guc::max_age(),
        }
    }

    /// Batches one message may have in flight.
    fn per_message_slots(&self) -> usize {
        (self.max_connections / 2).max(1)
    }
}

impl Deliverer {
    pub fn new() -> std::io::Result<Deliverer> {
        let settings = Settings::current();
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Ok(Deliverer {
            pool: Pool::new(settings.limits, Err("not loaded yet".into()))?,
            in_flight: HashMap::new(),
            derived_organization_id: None,
            jitter: Jitter::new(seed),
            refused: Vec::new(),
            roots_for: None,
            identities: HashMap::new(),
            claimed_since_vacuum: 0,
            new_groups: NewGroupsFound::at_start(),
        })
    }

    /// The socket that becomes readable when a delivery ends.
    pub fn wake_fd(&self) -> std::os::fd::RawFd {
        self.pool.wake_fd()
    }

    /// One step of the loop; returns how long the worker may sleep before the next (it also
    /// wakes on its latch and when a delivery ends). `None` means the extension is not
    /// installed in this database.
    pub fn step(&mut self) -> Option<Duration> {
        let settings = Settings::current();
        self.pool.set_limits(settings.limits.clone());
        self.load_roots_if_changed();
        if let Err(err) = self.pool.ensure_threads(settings.max_connections) {
            warning!("outbound_msg: could not start HTTP threads: {err}");
        }

        let mut finished = self.pool.finished();
        for done in &finished {
            self.finish(done.message_id);
        }
        finished.append(&mut self.refused);
        if !finished.is_empty() {
            let outcomes = Outcomes::new(finished, &settings, &mut self.jitter);
            // If recording fails, the leases run out and the notifications are sent again.
            super::transaction(move || outcomes.record());
        }

        let in_flight: usize = self.in_flight.values().sum();
        if self.claimed_since_vacuum >= VACUUM_AFTER_GROUPS
            && (in_flight == 0 || self.claimed_since_vacuum >= 4 * VACUUM_AFTER_GROUPS)
        {
            super::vacuum_queue();
            self.claimed_since_vacuum = 0;
        }
        let paused = guc::pause_delivery();
        // SAFETY: reads this worker's database.
        let database = unsafe { pg_sys::MyDatabaseId };
        self.new_groups.learn(shmem::begin_claim(database, paused));
        if paused {
            report_state(c"paused");
            return Some(IDLE_WAIT);
        }
        report_state(if in_flight > 0 {
            c"delivering"
        } else {
            c"idle"
        });
        let free = settings.max_connections.saturating_sub(in_flight);
        if free == 0 {
            return Some(IDLE_WAIT);
        }
        let slots = settings.per_message_slots();
        let reduced: Vec<(i64, usize)> = self
            .in_flight
            .iter()
            .map(|(message, busy)| (*message, slots.saturating_sub(*busy) * settings.batch_size))
            .collect();
        let limits = ClaimLimits {
            total: free * settings.batch_size,
            per_message: slots * settings.batch_size,
            reduced: &reduced,
            batch_size: settings.batch_size,
            lease: settings.limits.timeout + LEASE_MARGIN,
        };
        let known = self.derived_organization_id.clone();
        let prepared_since = shmem::take_prepared(database);
        let found = &mut self.new_groups;
        let claimed = super::transaction(|| {
            if !extension_installed() {
                return None;
            }
            let derived = known.unwrap_or_else(derived_organization_id);
            if let Ok(storage) = queue::storage() {
                found.set_storage(storage);
            }
            let offered = found.offer(limits.total);
            let batches = queue::claim(&limits, &offered).unwrap_or_else(|err| {
                warning!(
                    "outbound_msg: could not claim notifications: {}",
                    err.message
                );
                Vec::new()
            });
            let excluded = limits.excluded();
            let new_groups = found
                .after_claim(offered.len(), &excluded, prepared_since)
                .unwrap_or_else(|err| {
                    warning!(
                        "outbound_msg: could not index new notifications: {}",
                        err.message
                    );
                    found.kept_after_failure(prepared_since)
                });
            let next_due = queue::next_due(excluded).ok().flatten();
            let fingerprints = certificate_fingerprints(&batches);
            let claimed_groups = batches.iter().map(|b| b.rows.len()).sum();
            let analyze =
                claimed_groups > 0 && queue::statistics_behind(claimed_groups).unwrap_or(false);
            Some((
                new_groups,
                derived,
                batches,
                next_due,
                fingerprints,
                analyze,
            ))
        });
        let (new_groups, derived, batches, next_due, fingerprints, analyze) = match claimed {
            Some(claimed) => claimed?,
            None => {
                self.new_groups = self.new_groups.kept_after_failure(prepared_since);
                return Some(IDLE_WAIT.min(Duration::from_secs(1)));
            }
        };
        self.new_groups = new_groups;
        let organization_id = guc::organization_id().unwrap_or_else(|| derived.clone());
        self.derived_organization_id = Some(derived);

        let claimed_rows: usize = batches.iter().map(|b| b.notifications.len()).sum();
        let claimed_groups: usize = batches.iter().map(|b| b.rows.len()).sum();
        self.claimed_since_vacuum += claimed_groups;
        let header = HeaderValues {
            organization_id,
            enterprise_url: guc::enterprise_url(),
            partner_url: guc::partner_url(),
        };
        let allowed = guc::allowed_endpoints();
        for batch in batches {
            if !validate::host_allowed(&allowed, &batch.endpoint_url) {
                // Checked again before every send: the list may have shrunk since definition.
                let reason = "endpoint host is not allowed by outbound_msg.allowed_endpoints";
                self.refused.push(refusal(&batch, reason.into()));
                continue;
            }
            let identity = match &batch.client_certificate {
                None => None,
                Some(name) => match self.identity(name, &fingerprints) {
                    Ok(identity) => Some(identity),
                    Err(reason) => {
                        self.refused.push(refusal(&batch, reason));
                        continue;
                    }
                },
            };
            *self.in_flight.entry(batch.message_id).or_default() += 1;
            self.pool.submit(job(&header, batch, identity));
        }
        if analyze {
            // After the requests are on their way, in a transaction of its own: a failure only
            // leaves the statistics as they were.
            super::transaction(|| {
                if let Err(err) = queue::analyze() {
                    warning!("outbound_msg: could not analyze the queue: {}", err.message);
                }
            });
        }
        Some(
            if claimed_rows == limits.total || !self.refused.is_empty() {
                Duration::ZERO
            } else {
                let longest = self.new_groups.longest_sleep().unwrap_or(IDLE_WAIT);
                next_due.unwrap_or(IDLE_WAIT).min(longest)
            },
        )
    }

    /// Loads the roots again when `outbound_msg.ca_file` changed (and at start).
    fn load_roots_if_changed(&mut self) {
        let ca_file = guc::ca_file();
        if self.roots_for.as_ref() == Some(&ca_file) {
            return;
        }
        let roots = tls::load_roots(ca_file.as_deref());
        if let Err(problem) = &roots {
            warning!("outbound_msg: HTTPS endpoints cannot be verified: {problem}");
        }
        self.pool.set_roots(roots);
        self.roots_for = Some(ca_file);
    }

    /// The identity of client certificate `name`, loaded again when its fingerprint changed.
    fn identity(
        &mut self,
        name: &str,
        fingerprints: &HashMap<String, String>,
    ) -> Result<(String, Arc<Identity>), String> {
        let Some(fingerprint) = fingerprints.get(name) else {
            return Err(format!("client certificate \"{name}\" does not exist"));
        };
        if let Some((loaded, identity)) = self.identities.get(name) {
            if loaded == fingerprint {
                return Ok((format!("{name}/{fingerprint}"), Arc::clone(identity)));
            }
        }
        let pem = super::transaction(|| certificates::pem(name).ok().flatten()).flatten();
        let Some((certificate, key)) = pem else {
            return Err(format!("client certificate \"{name}\" does not exist"));
        };
        let (identity, _) = tls::parse_identity(&certificate, &key)
            .map_err(|err| format!("client certificate \"{name}\" is unusable: {err}"))?;
        let identity = Arc::new(identity);
        self.identities.insert(
            name.to_string(),
            (fingerprint.clone(), Arc::clone(&identity)),
        );
        Ok((format!("{name}/{fingerprint}"), identity))
    }

    fn finish(&mut self, message_id: i64) {
        if let Some(busy) = self.in_flight.get_mut(&message_id) {
            *busy -= 1;
            if *busy == 0 {
                self.in_flight.remove(&message_id);
            }
        }
    }
}

/// Header values that are the same for every message of a step.
struct HeaderValues {
    organization_id: String,
    enterprise_url: String,
    partner_url: String,
}

/// Shows the worker's state in `pg_stat_activity.query`: idle, delivering or paused.
fn report_state(state: &'static std::ffi::CStr) {
    thread_local! {
        static SHOWN: std::cell::Cell<*const std::ffi::c_char> = const { std::cell::Cell::new(std::ptr::null()) };
    }
    if SHOWN.replace(state.as_ptr()) != state.as_ptr() {
        // SAFETY: reports a static string as this process's activity.
        unsafe {
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, state.as_ptr())
        };
    }
}

/// A batch that fails without being sent.
fn refusal(batch: &Batch, reason: String) -> Done {
    Done {
        message_id: batch.message_id,
        rows: batch.rows.clone(),
        attempts: batch.attempts,
        outcome: Err(reason),
    }
}

/// Fingerprints of the client certificates the batches present (inside the claim transaction).
fn certificate_fingerprints(batches: &[Batch]) -> HashMap<String, String> {
    let mut names: Vec<String> = batches
        .iter()
        .filter_map(|b| b.client_certificate.clone())
        .collect();
    if names.is_empty() {
        return HashMap::new();
    }
    names.sort();
    names.dedup();
    certificates::fingerprints(&names)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The SOAP message for one batch.
fn job(values: &HeaderValues, batch: Batch, identity: Option<(String, Arc<Identity>)>) -> Job {
    let action_id = salesforce_id(ACTION_PREFIX, batch.message_id as u64);
    let header = Header {
        organization_id: &values.organization_id,
        action_id: &action_id,
        enterprise_url: &values.enterprise_url,
        partner_url: &values.partner_url,
    };
    let ids: Vec<String> = batch
        .notifications
        .iter()
        .map(|(number, _)| salesforce_id(NOTIFICATION_PREFIX, *number))
        .collect();
    let notifications: Vec<Notification> = ids
        .iter()
        .zip(&batch.notifications)
        .map(|(id, (_, fields_xml))| Notification { id, fields_xml })
        .collect();
    let body = soap::write_envelope(&header, &batch.object_type, &notifications);
    Job {
        message_id: batch.message_id,
        rows: batch.rows,
        attempts: batch.attempts,
        url: batch.endpoint_url,
        body,
        identity,
    }
}

/// Finished deliveries with their retry delays drawn, ready to record.
struct Outcomes {
    finished: Vec<(Done, Duration)>,
    max_age: Duration,
}

impl Outcomes {
    fn new(finished: Vec<Done>, settings: &Settings, jitter: &mut Jitter) -> Outcomes {
        let finished = finished
            .into_iter()
            .map(|done| {
                let delay = backoff(
                    done.attempts,
                    settings.retry_min,
                    settings.retry_max,
                    jitter.next_unit(),
                );
                (done, delay)
            })
            .collect();
        Outcomes {
            finished,
            max_age: settings.max_age,
        }
    }

    /// Records every outcome; a failure to record one is logged, never fatal (the lease then
    /// runs out and the notifications are sent again).
    fn record(&self) {
        for (done, delay) in &self.finished {
            let recorded = match &done.outcome {
                Ok(()) => queue::acknowledge(done.message_id, &done.rows),
                Err(reason) => {
                    queue::record_failure(done.message_id, &done.rows, reason, *delay, self.max_age)
                }
            };
            if let Err(err) = recorded {
                warning!(
                    "outbound_msg: could not record a delivery outcome: {}",
                    err.message
                );
            }
        }
    }
}

/// Whether `CREATE EXTENSION outbound_msg` has run in this database.
fn extension_installed() -> bool {
    // SAFETY: a catalog lookup, inside the step's transaction.
    unsafe { pg_sys::get_extension_oid(c"outbound_msg".as_ptr(), true) != pg_sys::InvalidOid }
}

/// The cluster's OrganizationId, derived from its system identifier: stable for the cluster's
/// life and shared by its physical replicas.
fn derived_organization_id() -> String {
    let system_identifier =
        Spi::get_one::<i64>("SELECT system_identifier FROM pg_control_system()")
            .ok()
            .flatten()
            .unwrap_or(0);
    salesforce_id(ORGANIZATION_PREFIX, system_identifier as u64)
}
