//! Endpoint health: a circuit breaker per endpoint (scheme, host, port), so that no number of
//! silent, slow, refusing or failing endpoints delays a healthy one.
//!
//! Pure Rust. An endpoint is
//! - **healthy** (closed) after a success: its messages use the worker's request slots as
//!   usual;
//! - **unproven** until its first answer since it was last known, and **failing** (open) after
//!   a failure: it gets probing traffic only, one request in flight for the whole endpoint, the
//!   next one once its probe is due (backoff by the retry schedule, or a `Retry-After`); a
//!   success makes it healthy (half-open -> closed);
//! - **slow** while a request of it has been outstanding longer than the connect timeout: no
//!   further request until that one ends.
//!
//! Probes count against a budget of their own, and requests outstanding past the slow
//! threshold (stuck) against neither budget, within a bound of their own: the worker's (see
//! `deliver`). Together they never take a healthy endpoint's slot.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// What an endpoint may be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// As many requests as its messages' slots allow.
    Full,
    /// One request, a probe, from the failing budget.
    Probe,
    /// Nothing now.
    Nothing,
}

/// The circuit state of an endpoint, as the `endpoints` view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Unproven,
    Healthy,
    Failing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unproven => "unproven",
            State::Healthy => "healthy",
            State::Failing => "failing",
        }
    }

    pub fn parse(text: &str) -> State {
        match text {
            "healthy" => State::Healthy,
            "failing" => State::Failing,
            _ => State::Unproven,
        }
    }
}

/// What is known of one endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub state: State,
    pub consecutive_failures: u32,
    /// Since when it fails (its first failure after its last success).
    pub failing_since: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    /// When a failing endpoint may be probed again.
    pub next_probe: Instant,
    /// Requests in flight: each job's id, when it started, and whether it is a probe.
    in_flight: Vec<(u64, Instant, bool)>,
    /// Changed since it was last reported (written to the endpoint_health table).
    changed: bool,
    /// Requests in flight when it was last reported.
    reported_in_flight: usize,
}

/// An endpoint as reported to the `outbound_msg.endpoint_health` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub endpoint: String,
    pub state: State,
    pub consecutive_failures: u32,
    pub failing_since: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
    pub last_error: Option<String>,
    pub requests_in_flight: usize,
}

impl Endpoint {
    fn new(now: Instant) -> Endpoint {
        Endpoint {
            state: State::Unproven,
            consecutive_failures: 0,
            failing_since: None,
            last_success: None,
            last_error: None,
            next_probe: now,
            in_flight: Vec::new(),
            changed: true,
            reported_in_flight: 0,
        }
    }

    fn slow(&self, now: Instant, threshold: Duration) -> bool {
        self.in_flight
            .iter()
            .any(|(_, started, _)| now.duration_since(*started) >= threshold)
    }
}

/// Requests in flight: to healthy endpoints, probes, and either outstanding past the slow
/// threshold (stuck: they hold a thread, but no slot of either budget).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub healthy: usize,
    pub probing: usize,
    pub stuck: usize,
}

/// The health of every endpoint a worker sends to.
#[derive(Default)]
pub struct Health {
    endpoints: HashMap<String, Endpoint>,
}

impl Health {
    /// Knows an endpoint as a previous worker of the database last reported it; a failing one
    /// is probed at once.
    pub fn restore(&mut self, report: Report, now: Instant) {
        // Reported again at once (`Endpoint::new` marks it changed): this worker has no
        // request in flight yet.
        let known = Endpoint {
            state: report.state,
            consecutive_failures: report.consecutive_failures,
            failing_since: report.failing_since,
            last_success: report.last_success,
            last_error: report.last_error,
            ..Endpoint::new(now)
        };
        self.endpoints.insert(report.endpoint, known);
    }

    fn entry(&mut self, endpoint: &str, now: Instant) -> &mut Endpoint {
        self.endpoints
            .entry(endpoint.to_string())
            .or_insert_with(|| Endpoint::new(now))
    }

    /// What `endpoint` may be sent now, requests outstanding longer than `slow` counting as
    /// slow.
    pub fn allowance(&self, endpoint: &str, now: Instant, slow: Duration) -> Allowance {
        let Some(known) = self.endpoints.get(endpoint) else {
            return Allowance::Probe;
        };
        match known.state {
            State::Healthy if !known.slow(now, slow) => Allowance::Full,
            _ if !known.in_flight.is_empty() => Allowance::Nothing,
            State::Failing if known.next_probe > now => Allowance::Nothing,
            _ => Allowance::Probe,
        }
    }

    /// Which endpoint to probe first when probes are scarce: one that never failed (new, or
    /// not answered yet) before one that did, then the one whose probe has been due longest.
    pub fn probe_priority(&self, endpoint: &str, now: Instant) -> (bool, Instant) {
        match self.endpoints.get(endpoint) {
            Some(known) => (known.consecutive_failures > 0, known.next_probe),
            None => (false, now),
        }
    }

    /// Requests in flight, by what they count against.
    pub fn in_flight(&self, now: Instant, slow: Duration) -> InFlight {
        let mut counts = InFlight::default();
        for (_, started, probe) in self.endpoints.values().flat_map(|e| &e.in_flight) {
            if now.duration_since(*started) >= slow {
                counts.stuck += 1;
            } else if *probe {
                counts.probing += 1;
            } else {
                counts.healthy += 1;
            }
        }
        counts
    }

    /// Shows endpoints with a request unanswered for `slow` as failing (their state in the
    /// `endpoints` view), without counting a failure: the request may still succeed.
    pub fn mark_slow(&mut self, now: Instant, slow: Duration) {
        for known in self.endpoints.values_mut() {
            if known.state != State::Failing && known.slow(now, slow) {
                known.state = State::Failing;
                known.failing_since = Some(SystemTime::now());
                known.last_error = Some(format!(
                    "no answer within {} ms (outbound_msg.connect_timeout); still waiting",
                    slow.as_millis()
                ));
                known.changed = true;
            }
        }
    }

    /// Records request `job` to `endpoint`, sent now; `probe` when it comes out of the probe
    /// budget.
    pub fn sent(&mut self, endpoint: &str, job: u64, probe: bool, now: Instant) {
        self.entry(endpoint, now).in_flight.push((job, now, probe));
    }

    /// Records the end of request `job` to `endpoint`: a success, or a failure after which the
    /// endpoint is probed again in `retry_in`.
    pub fn finished(
        &mut self,
        endpoint: &str,
        job: u64,
        outcome: Result<(), (&str, Duration)>,
        now: Instant,
    ) {
        let known = self.entry(endpoint, now);
        known.in_flight.retain(|(id, _, _)| *id != job);
        match outcome {
            Ok(()) => {
                if known.state != State::Healthy || known.consecutive_failures > 0 {
                    known.changed = true;
                }
                known.state = State::Healthy;
                known.consecutive_failures = 0;
                known.failing_since = None;
                known.last_success = Some(SystemTime::now());
            }
            Err((reason, retry_in)) => {
                if known.state != State::Failing {
                    known.failing_since = Some(SystemTime::now());
                }
                known.state = State::Failing;
                known.consecutive_failures = known.consecutive_failures.saturating_add(1);
                known.last_error = Some(reason.to_string());
                known.next_probe = now + retry_in;
                known.changed = true;
            }
        }
    }

    /// When a step is next needed for an endpoint's sake: a failing endpoint's probe falls
    /// due, or a request in flight becomes slow (outstanding for `slow`). Only what is still
    /// to come: a probe already due waits for its message's notifications to be due.
    pub fn next_change(&self, now: Instant, slow: Duration) -> Option<Instant> {
        self.endpoints
            .values()
            .flat_map(|e| {
                let probe =
                    (e.state == State::Failing && e.in_flight.is_empty()).then_some(e.next_probe);
                let slowing = e.in_flight.iter().map(|(_, started, _)| *started + slow);
                probe.into_iter().chain(slowing)
            })
            .filter(|at| *at > now)
            .min()
    }

    /// What to report: endpoints whose state changed, and when `in_flight_too`, those whose
    /// requests in flight changed. Each is then taken as reported.
    pub fn take_reports(&mut self, in_flight_too: bool) -> Vec<Report> {
        let mut reports = Vec::new();
        for (endpoint, known) in &mut self.endpoints {
            let in_flight = known.in_flight.len();
            let in_flight_changed = in_flight_too && in_flight != known.reported_in_flight;
            if !(known.changed || in_flight_changed) {
                continue;
            }
            known.changed = false;
            known.reported_in_flight = in_flight;
            reports.push(Report {
                endpoint: endpoint.clone(),
                state: known.state,
                consecutive_failures: known.consecutive_failures,
                failing_since: known.failing_since,
                last_success: known.last_success,
                last_error: known.last_error.clone(),
                requests_in_flight: in_flight,
            });
        }
        reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_secs(5);

    #[test]
    fn an_unknown_endpoint_is_probed_and_a_success_opens_it_fully() {
        let now = Instant::now();
        let mut health = Health::default();
        assert_eq!(health.allowance("e", now, SLOW), Allowance::Probe);
        health.sent("e", 1, true, now);
        assert_eq!(health.allowance("e", now, SLOW), Allowance::Nothing);
        assert_eq!(health.in_flight(now, SLOW).probing, 1);
        health.finished("e", 1, Ok(()), now);
        assert_eq!(health.allowance("e", now, SLOW), Allowance::Full);
        assert_eq!(health.in_flight(now, SLOW), InFlight::default());
    }

    #[test]
    fn a_failing_endpoint_is_probed_once_when_due() {
        let now = Instant::now();
        let mut health = Health::default();
        health.sent("e", 1, false, now);
        health.finished("e", 1, Err(("timeout", Duration::from_secs(10))), now);
        assert_eq!(health.allowance("e", now, SLOW), Allowance::Nothing);
        let later = now + Duration::from_secs(10);
        assert_eq!(health.allowance("e", later, SLOW), Allowance::Probe);
        health.sent("e", 2, true, later);
        assert_eq!(health.allowance("e", later, SLOW), Allowance::Nothing);
        health.finished("e", 2, Err(("timeout", Duration::from_secs(20))), later);
        assert_eq!(health.endpoints["e"].consecutive_failures, 2);
        let recovered = later + Duration::from_secs(20);
        health.sent("e", 3, true, recovered);
        health.finished("e", 3, Ok(()), recovered);
        assert_eq!(health.allowance("e", recovered, SLOW), Allowance::Full);
        assert_eq!(health.endpoints["e"].consecutive_failures, 0);
    }

    #[test]
    fn state_changes_are_reported_at_once_requests_in_flight_when_asked() {
        let now = Instant::now();
        let mut health = Health::default();
        health.sent("e", 1, true, now);
        assert_eq!(health.take_reports(false).len(), 1, "a new endpoint");
        assert!(health.take_reports(false).is_empty());
        health.sent("e", 2, false, now);
        assert!(health.take_reports(false).is_empty());
        assert_eq!(health.take_reports(true)[0].requests_in_flight, 2);
        health.finished("e", 1, Err(("refused", Duration::from_secs(1))), now);
        let report = &health.take_reports(false)[0];
        assert_eq!(report.state, State::Failing);
        assert_eq!(report.last_error.as_deref(), Some("refused"));
        assert_eq!(
            health.next_change(now, SLOW),
            Some(now + SLOW),
            "request 2 becomes slow"
        );
    }

    #[test]
    fn a_request_outstanding_past_the_slow_threshold_is_stuck() {
        let now = Instant::now();
        let mut health = Health::default();
        health.sent("e", 1, true, now);
        health.finished("e", 1, Ok(()), now);
        health.sent("e", 2, false, now);
        health.sent("f", 3, true, now);
        let counts = health.in_flight(now, SLOW);
        assert_eq!((counts.healthy, counts.probing, counts.stuck), (1, 1, 0));
        let later = now + SLOW;
        assert_eq!(health.allowance("e", later, SLOW), Allowance::Nothing);
        let counts = health.in_flight(later, SLOW);
        assert_eq!((counts.healthy, counts.probing, counts.stuck), (0, 0, 2));
        health.mark_slow(later, SLOW);
        let report = health.take_reports(false);
        assert!(report.iter().all(|r| r.state == State::Failing));
        assert_eq!(report.len(), 2);
        health.finished("e", 2, Ok(()), later);
        assert_eq!(health.allowance("e", later, SLOW), Allowance::Full);
    }
}
