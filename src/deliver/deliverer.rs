//! The delivery loop of a worker: record finished deliveries, claim due notifications for the
//! free request slots, hand them to the HTTP pool. Claims and outcomes each run in a short
//! transaction on the main thread; HTTP runs on the pool's threads, outside any transaction.
//!
//! Request slots come from two budgets (see [`super::health`]): `max_connections` for healthy
//! endpoints, of which one message uses at most half (at least one); and as many again for
//! probes of endpoints that are unproven or failing. A request unanswered past
//! `connect_timeout` is stuck: it leaves its budget (its endpoint gets nothing more until it
//! ends), and while [`STUCK_PER_CONNECTION`] × `max_connections` are stuck no probe starts.
//! However many endpoints are silent, slow or failing, a healthy endpoint's notifications find
//! a free slot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use super::endpoints;
use super::health::{Allowance, Health};
use super::pool::{Done, Job, Pool};
use super::shmem;
use crate::define::validate::endpoint_of;
use crate::define::{certificates, validate};
use crate::deliver::http::{Failure, Limits};
use crate::deliver::retry::{backoff, Jitter};
use crate::deliver::tls::{self, Identity};
use crate::guc;
use crate::queue::new_rows::{Announcement, NewRows};
use crate::queue::{self, Batch, ClaimLimits, Row};
use crate::wire::ids::{salesforce_id, ACTION_PREFIX, NOTIFICATION_PREFIX, ORGANIZATION_PREFIX};
use crate::wire::soap::{self, Header, Notification};

/// Largest listener response read.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;
/// A lease outlasts the request's own timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Longest sleep when nothing is due. Commits wake the worker; this timed look only catches
/// what no commit announced (prepared transactions committed elsewhere).
pub const IDLE_WAIT: Duration = Duration::from_secs(10);
/// Requests that may be stuck (unanswered past `connect_timeout`) per `max_connections`
/// before probes wait for some of them to end: each holds a thread.
const STUCK_PER_CONNECTION: usize = 3;
/// Most HTTP threads of a worker: the largest `max_connections` times healthy, probing and
/// stuck requests.
const MOST_THREADS: usize = 64 * (2 + STUCK_PER_CONNECTION);
/// How often endpoints whose only change is their requests in flight are reported.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Delivers the queue of the worker's database.
pub struct Deliverer {
    pool: Pool,
    derived_organization_id: Option<String>,
    jitter: Jitter,
    /// Batches refused without sending (endpoint no longer allowed), recorded next step.
    refused: Vec<Done>,
    /// Batches claimed but not sent (their endpoint may take nothing now), released next step.
    unsent: Vec<Row>,
    /// The `outbound_msg.ca_file` the pool's roots were loaded for.
    roots_for: Option<Option<String>>,
    /// Client identities by certificate name, with the fingerprint they were loaded at.
    identities: HashMap<String, (String, Arc<Identity>)>,
    /// Groups claimed since the worker last vacuumed the queue: each leaves dead row versions.
    claimed_since_vacuum: usize,
    /// New groups (in no index) the worker knows of or still has to find, offered to claims.
    new_rows: NewRows,
    /// Each endpoint's health.
    health: Health,
    /// The endpoint of each message, as defined; `None` until loaded.
    endpoints: Option<HashMap<i64, String>>,
    /// Each job in flight: its message and endpoint.
    jobs: HashMap<u64, (i64, String)>,
    next_job: u64,
    last_report: Instant,
    /// Notifications the last claim took.
    last_claimed: usize,
    /// Claims nothing more: the worker gives its place up once what is in flight has ended.
    draining: bool,
}

/// Groups claimed after which the worker vacuums the queue itself, when nothing is in flight
/// (at four times as many, even with deliveries in flight).
const VACUUM_AFTER_GROUPS: usize = 20_000;

/// Up to this many messages allowed, a claim probes the due index for each of them.
const FEW_MESSAGES: usize = 32;

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
                connect_timeout: guc::connect_timeout(),
                max_response_bytes: MAX_RESPONSE_BYTES,
            },
            retry_min: guc::retry_min_interval(),
            retry_max: guc::retry_max_interval(),
            max_age: guc::max_age(),
        }
    }

    /// Batches one message, and all messages to one endpoint together, may have in flight:
    /// half the connections, so that a healthy endpoint that stops answering leaves the other
    /// half to the others until it shows as failing.
    fn per_message_slots(&self) -> usize {
        (self.max_connections / 2).max(1)
    }

    /// How long a request may go unanswered before its endpoint counts as slow.
    fn slow(&self) -> Duration {
        self.limits.connect_timeout.min(self.limits.timeout)
    }
}

/// What a claim may take: per message, and which endpoints it may probe.
struct ClaimPlan {
    allowances: Vec<(i64, usize)>,
    /// Endpoints granted one probe in this claim.
    probes: HashSet<String>,
    /// Slots for healthy endpoints' requests.
    healthy_free: usize,
}

/// What a claim transaction returns.
struct Claimed {
    new_rows: NewRows,
    derived_organization_id: String,
    batches: Vec<Batch>,
    next_due: Option<Duration>,
    fingerprints: HashMap<String, String>,
    analyze: bool,
}

impl Deliverer {
    pub fn new() -> std::io::Result<Deliverer> {
        endpoints::watch_definitions(None);
        let settings = Settings::current();
        let seed = std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        Ok(Deliverer {
            pool: Pool::new(settings.limits, Err("not loaded yet".into()))?,
            derived_organization_id: None,
            jitter: Jitter::new(seed),
            refused: Vec::new(),
            unsent: Vec::new(),
            roots_for: None,
            identities: HashMap::new(),
            claimed_since_vacuum: 0,
            new_rows: NewRows::at_start(),
            health: Health::default(),
            endpoints: None,
            jobs: HashMap::new(),
            next_job: 0,
            last_report: Instant::now(),
            last_claimed: 0,
            draining: false,
        })
    }

    /// Whether the last step found nothing to send, nothing is in flight, and no new group is
    /// left to find.
    pub fn idle(&self) -> bool {
        self.last_claimed == 0 && self.new_rows.settled() && self.quiet()
    }

    /// Whether nothing is in flight and every outcome is recorded.
    fn quiet(&self) -> bool {
        self.jobs.is_empty() && self.refused.is_empty() && self.unsent.is_empty()
    }

    /// Claims nothing more from now on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether it drains and everything in flight has ended and been recorded (what it knew
    /// of new groups is left to the next worker's sweep).
    pub fn drained(&self) -> bool {
        self.draining && self.quiet()
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
        self.record_finished(&settings);

        let in_flight = self.jobs.len();
        if self.claimed_since_vacuum >= VACUUM_AFTER_GROUPS
            && (in_flight == 0 || self.claimed_since_vacuum >= 4 * VACUUM_AFTER_GROUPS)
        {
            super::vacuum_queue();
            self.claimed_since_vacuum = 0;
        }
        self.last_claimed = 0;
        if self.draining {
            // Commits keep asking for delivery (woken, fresh rows): the next worker serves them.
            return Some(IDLE_WAIT);
        }
        let paused = guc::pause_delivery();
        // SAFETY: reads this worker's database.
        let database = unsafe { pg_sys::MyDatabaseId };
        let seen = shmem::begin_claim(database, paused);
        self.new_rows.learn(
            seen.rows.into_iter().map(Announcement::from_raw),
            seen.sweep,
        );
        if paused {
            report_state(c"paused");
            return Some(IDLE_WAIT);
        }
        report_state(if in_flight > 0 {
            c"delivering"
        } else {
            c"idle"
        });
        // Cleared before the transaction that reads them starts: a definition committed after
        // its snapshot sets it again.
        if endpoints::definitions_changed() || self.endpoints.is_none() {
            let loaded = super::transaction(|| {
                if !extension_installed() {
                    return None;
                }
                Some(self.load_endpoints())
            });
            match loaded {
                Some(None) => return None,
                Some(Some(Ok(()))) => {}
                _ => {
                    endpoints::definitions_still_changed();
                    return Some(Duration::from_secs(1));
                }
            }
        }
        let now = Instant::now();
        self.health.mark_slow(now, settings.slow());
        // A claim runs even when no message may take anything: it finds new groups (and
        // indexes those of messages that cannot take them), and its transaction takes
        // PostgreSQL's invalidations, so a message just defined or moved is seen next step.
        let plan = self.plan(&settings, now);
        let total = (plan.healthy_free + plan.probes.len()) * settings.batch_size;
        let limits = ClaimLimits {
            total,
            allowances: &plan.allowances,
            batch_size: settings.batch_size,
            lease: settings.limits.timeout + LEASE_MARGIN,
        };
        let prepared_since = shmem::take_prepared(database);
        let claimed = self.claim(&limits, prepared_since);
        let Some(claimed) = claimed else {
            self.new_rows = self.new_rows.kept_after_failure(prepared_since);
            return Some(IDLE_WAIT.min(Duration::from_secs(1)));
        };
        let claimed = claimed?;
        self.new_rows = claimed.new_rows;
        let organization_id =
            guc::organization_id().unwrap_or_else(|| claimed.derived_organization_id.clone());
        self.derived_organization_id = Some(claimed.derived_organization_id);

        let claimed_rows: usize = claimed.batches.iter().map(|b| b.notifications.len()).sum();
        self.last_claimed = claimed_rows;
        let claimed_groups: usize = claimed.batches.iter().map(|b| b.rows.len()).sum();
        self.claimed_since_vacuum += claimed_groups;
        let header = HeaderValues {
            organization_id,
            enterprise_url: guc::enterprise_url(),
            partner_url: guc::partner_url(),
        };
        self.dispatch(
            claimed.batches,
            plan,
            &header,
            &claimed.fingerprints,
            &settings,
        );
        if claimed.analyze {
            // After the requests are on their way, in a transaction of its own: a failure only
            // leaves the statistics as they were.
            super::transaction(|| {
                if let Err(err) = queue::analyze() {
                    warning!("outbound_msg: could not analyze the queue: {}", err.message);
                }
            });
        }
        self.report_endpoints(now);
        Some(
            if (total > 0 && claimed_rows == total)
                || !self.refused.is_empty()
                || !self.unsent.is_empty()
                || endpoints::definitions_changed_pending()
            {
                Duration::ZERO
            } else {
                let longest = self.new_rows.longest_sleep().unwrap_or(IDLE_WAIT);
                let health = self.health_wake(&settings, now).unwrap_or(IDLE_WAIT);
                claimed
                    .next_due
                    .unwrap_or(IDLE_WAIT)
                    .min(longest)
                    .min(health)
            },
        )
    }

    /// Records what the HTTP threads finished and what was refused or left unsent: outcomes on
    /// the queue, and on each endpoint's health.
    fn record_finished(&mut self, settings: &Settings) {
        let mut finished = self.pool.finished();
        finished.append(&mut self.refused);
        let unsent = std::mem::take(&mut self.unsent);
        if finished.is_empty() && unsent.is_empty() {
            return;
        }
        let outcomes = Outcomes::new(finished, settings, &mut self.jitter);
        let now = Instant::now();
        for (done, delay) in &outcomes.finished {
            // Refused batches were never sent: no job, nothing learnt of their endpoint.
            let Some(job) = done.job else {
                continue;
            };
            let Some((_, endpoint)) = self.jobs.remove(&job) else {
                continue;
            };
            let outcome = match &done.outcome {
                Ok(()) => Ok(()),
                Err(failure) => Err((failure.reason.as_str(), *delay)),
            };
            self.health.finished(&endpoint, job, outcome, now);
        }
        // If recording fails, the leases run out and the notifications are sent again.
        super::transaction(move || {
            outcomes.record();
            if !unsent.is_empty() {
                if let Err(err) = queue::release(&unsent) {
                    warning!(
                        "outbound_msg: could not release notifications: {}",
                        err.message
                    );
                }
            }
        });
    }

    /// Loads every message's endpoint (in a transaction), and what previous workers reported
    /// of their health the first time.
    fn load_endpoints(&mut self) -> crate::error::Result<()> {
        let urls = queue::endpoint_urls()?;
        let first = self.endpoints.is_none();
        let map: HashMap<i64, String> = urls
            .into_iter()
            .map(|(message, url)| (message, endpoint_of(&url)))
            .collect();
        if first {
            endpoints::load(&mut self.health)?;
        }
        endpoints::watch_definitions(Some(crate::define::catalog::definitions_table()));
        self.endpoints = Some(map);
        Ok(())
    }

    /// What each message may take now: a healthy endpoint's messages what their free slots
    /// allow; one message of each unproven or failing endpoint whose probe is due one batch,
    /// while the probe budget lasts and not too many requests are stuck.
    fn plan(&self, settings: &Settings, now: Instant) -> ClaimPlan {
        let requests = self.health.in_flight(now, settings.slow());
        let healthy_free = settings.max_connections.saturating_sub(requests.healthy);
        let mut failing_free = settings
            .max_connections
            .saturating_sub(requests.probing)
            .min((STUCK_PER_CONNECTION * settings.max_connections).saturating_sub(requests.stuck));
        let slots = settings.per_message_slots();
        let mut allowances = Vec::new();
        let mut candidates = Vec::new();
        let mut busy_by_message: HashMap<i64, usize> = HashMap::new();
        for (message, _) in self.jobs.values() {
            *busy_by_message.entry(*message).or_default() += 1;
        }
        let busy_by_endpoint = self.busy_by_endpoint();
        for (message, endpoint) in self.endpoints.iter().flatten() {
            let busy = busy_by_message.get(message).copied().unwrap_or(0);
            let endpoint_busy = busy_by_endpoint
                .get(endpoint.as_str())
                .copied()
                .unwrap_or(0);
            let free = slots.saturating_sub(busy.max(endpoint_busy));
            match self.health.allowance(endpoint, now, settings.slow()) {
                Allowance::Full if healthy_free > 0 && free > 0 => {
                    allowances.push((*message, free * settings.batch_size));
                }
                Allowance::Probe => candidates.push((
                    self.health.probe_priority(endpoint, now),
                    *message,
                    endpoint,
                )),
                _ => {}
            }
        }
        // Probes are scarce while many endpoints fail: a new endpoint first, then the one
        // whose probe is overdue longest (the oldest definition of each endpoint probes it).
        candidates.sort_unstable();
        let mut probes = HashSet::new();
        for (_, message, endpoint) in candidates {
            if failing_free == 0 {
                break;
            }
            if probes.insert(endpoint.clone()) {
                failing_free -= 1;
                allowances.push((message, settings.batch_size));
            }
        }
        ClaimPlan {
            allowances,
            probes,
            healthy_free,
        }
    }

    /// Requests in flight to each endpoint.
    fn busy_by_endpoint(&self) -> HashMap<&str, usize> {
        let mut busy: HashMap<&str, usize> = HashMap::new();
        for (_, endpoint) in self.jobs.values() {
            *busy.entry(endpoint.as_str()).or_default() += 1;
        }
        busy
    }

    /// Claims within `limits` in a transaction of its own; `None` if it failed, `Some(None)`
    /// if the extension is not installed.
    fn claim(&mut self, limits: &ClaimLimits, prepared_since: bool) -> Option<Option<Claimed>> {
        let known = self.derived_organization_id.clone();
        let found = &mut self.new_rows;
        super::transaction(|| {
            if !extension_installed() {
                return None;
            }
            let derived = known.unwrap_or_else(derived_organization_id);
            if let Ok(storage) = queue::new_rows::storage() {
                found.set_storage(storage);
            }
            let mut allowed: Vec<i64> = limits.allowances.iter().map(|(m, _)| *m).collect();
            allowed.sort_unstable();
            // Kept if the transaction commits; `found` stays as it was otherwise.
            let mut next = found.clone();
            let many = allowed.len() > FEW_MESSAGES;
            if let Err(err) = next.sort_out(limits.total, &allowed, many) {
                warning!(
                    "outbound_msg: could not sort out new notifications: {}",
                    err.message
                );
                next = found.clone();
            }
            let offer = next.offer(limits.total, limits.allowances);
            let indexed = in_index(&allowed);
            // With many messages allowed, the claim is told of those it may find something of:
            // its plan's cost grows with each one.
            let relevant: Vec<(i64, usize)> = limits
                .allowances
                .iter()
                .copied()
                .filter(|(m, _)| {
                    !many
                        || offer.unknown_messages
                        || offer.messages.contains(m)
                        || indexed.binary_search(m).is_ok()
                })
                .collect();
            let limits = &ClaimLimits {
                allowances: &relevant,
                ..*limits
            };
            let offered = offer.addresses;
            let batches = queue::claim(limits, &offered, &indexed).unwrap_or_else(|err| {
                warning!(
                    "outbound_msg: could not claim notifications: {}",
                    err.message
                );
                Vec::new()
            });
            let new_rows = match next.after_claim(&offered, &allowed, prepared_since) {
                Ok(()) => next,
                Err(err) => {
                    warning!(
                        "outbound_msg: could not index new notifications: {}",
                        err.message
                    );
                    found.kept_after_failure(prepared_since)
                }
            };
            let next_due = queue::next_due(indexed).ok().flatten();
            let fingerprints = certificate_fingerprints(&batches);
            let claimed_groups = batches.iter().map(|b| b.rows.len()).sum();
            let analyze =
                claimed_groups > 0 && queue::statistics_behind(claimed_groups).unwrap_or(false);
            Some(Claimed {
                new_rows,
                derived_organization_id: derived,
                batches,
                next_due,
                fingerprints,
                analyze,
            })
        })
    }

    /// Hands the claimed batches to the HTTP threads: a healthy endpoint's as its slots allow,
    /// one probe for each endpoint granted one; the rest go back to the queue unsent.
    fn dispatch(
        &mut self,
        batches: Vec<Batch>,
        mut plan: ClaimPlan,
        header: &HeaderValues,
        fingerprints: &HashMap<String, String>,
        settings: &Settings,
    ) {
        let now = Instant::now();
        let allowed = guc::allowed_endpoints();
        // Requests in flight per endpoint, counted once and kept up to date as batches go.
        let mut busy: HashMap<String, usize> = self
            .busy_by_endpoint()
            .into_iter()
            .map(|(endpoint, n)| (endpoint.to_string(), n))
            .collect();
        for batch in batches {
            if !validate::host_allowed(&allowed, &batch.endpoint_url) {
                // Checked again before every send: the list may have shrunk since definition.
                let reason = "endpoint host is not allowed by outbound_msg.allowed_endpoints";
                self.refused.push(refusal(&batch, reason.into()));
                continue;
            }
            let endpoint = endpoint_of(&batch.endpoint_url);
            let probe = match self.health.allowance(&endpoint, now, settings.slow()) {
                // Messages to one endpoint were each allowed what the endpoint could take.
                Allowance::Full
                    if busy.get(&endpoint).copied().unwrap_or(0)
                        >= settings.per_message_slots() =>
                {
                    self.unsent.extend(batch.rows);
                    continue;
                }
                Allowance::Full => false,
                Allowance::Probe if plan.probes.remove(&endpoint) => true,
                _ => {
                    self.unsent.extend(batch.rows);
                    continue;
                }
            };
            let identity = match &batch.client_certificate {
                None => None,
                Some(name) => match self.identity(name, fingerprints) {
                    Ok(identity) => Some(identity),
                    Err(reason) => {
                        self.refused.push(refusal(&batch, reason));
                        continue;
                    }
                },
            };
            self.next_job += 1;
            let id = self.next_job;
            self.health.sent(&endpoint, id, probe, now);
            *busy.entry(endpoint.clone()).or_default() += 1;
            self.jobs.insert(id, (batch.message_id, endpoint));
            let threads = self
                .jobs
                .len()
                .clamp(settings.max_connections, MOST_THREADS);
            if let Err(err) = self.pool.ensure_threads(threads) {
                warning!("outbound_msg: could not start HTTP threads: {err}");
            }
            self.pool.submit(job(id, header, batch, identity));
        }
    }

    /// When the health of endpoints next needs a step: a failing endpoint's probe falls due,
    /// or a request in flight becomes slow.
    fn health_wake(&self, settings: &Settings, now: Instant) -> Option<Duration> {
        self.health
            .next_change(now, settings.slow())
            .map(|at| at.saturating_duration_since(now))
    }

    /// Writes what changed of endpoints' health to `outbound_msg.endpoint_health`: state
    /// changes at once, requests in flight at most every [`REPORT_INTERVAL`].
    fn report_endpoints(&mut self, now: Instant) {
        let due = now.duration_since(self.last_report) >= REPORT_INTERVAL;
        let reports = self.health.take_reports(due);
        if reports.is_empty() {
            return;
        }
        if due {
            self.last_report = now;
        }
        super::transaction(|| {
            if let Err(err) = endpoints::report(&reports) {
                warning!(
                    "outbound_msg: could not report endpoint health: {}",
                    err.message
                );
            }
        });
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
}

/// Header values that are the same for every message of a step.
struct HeaderValues {
    organization_id: String,
    enterprise_url: String,
    partner_url: String,
}

/// Those of the messages `allowed` (sorted) that may have groups in the due index: all of
/// them when they are few, otherwise those a loose scan of the index finds (with thousands of
/// definitions, probing the index for each would cost every claim more than its work).
fn in_index(allowed: &[i64]) -> Vec<i64> {
    if allowed.len() <= FEW_MESSAGES {
        return allowed.to_vec();
    }
    match queue::messages_in_index() {
        Ok(indexed) => allowed
            .iter()
            .copied()
            .filter(|m| indexed.binary_search(m).is_ok())
            .collect(),
        Err(_) => allowed.to_vec(),
    }
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
        job: None,
        message_id: batch.message_id,
        rows: batch.rows.clone(),
        attempts: batch.attempts,
        outcome: Err(Failure::from(reason)),
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
fn job(
    id: u64,
    values: &HeaderValues,
    batch: Batch,
    identity: Option<(String, Arc<Identity>)>,
) -> Job {
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
        id,
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
                let backoff = backoff(
                    done.attempts,
                    settings.retry_min,
                    settings.retry_max,
                    jitter.next_unit(),
                );
                // A listener's Retry-After (429, 503) is honoured, within retry_max_interval.
                let delay = match &done.outcome {
                    Err(Failure {
                        retry_after: Some(asked),
                        ..
                    }) => (*asked).min(settings.retry_max),
                    _ => backoff,
                };
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
                Err(failure) => queue::record_failure(
                    done.message_id,
                    &done.rows,
                    &failure.reason,
                    *delay,
                    self.max_age,
                ),
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
