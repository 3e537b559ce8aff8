//! The `outbound_msg.endpoint_health` table: what the worker last reported of each endpoint's
//! health (see [`super::health`]), for the `outbound_msg.endpoints` view and for the next worker
//! of the database. Written only here.
//!
//! The worker keeps the endpoint of every message; a change of definitions, which PostgreSQL
//! announces to every backend as an invalidation of the definitions table, makes it load them
//! again.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pgrx::prelude::*;

use super::health::{Health, Report, State};
use crate::error::Result;

thread_local! {
    /// Set when definitions may have changed since the worker last loaded them.
    static CHANGED: Cell<bool> = const { Cell::new(false) };
    /// The definitions table whose invalidation says so.
    static DEFINITIONS: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Whether definitions changed since the last call (or the callback was set up); clears it.
pub fn definitions_changed() -> bool {
    CHANGED.replace(false)
}

/// Keeps definitions marked as changed: loading them failed, the next step tries again.
pub fn definitions_still_changed() {
    CHANGED.set(true);
}

/// Whether definitions changed since [`definitions_changed`] last cleared it.
pub fn definitions_changed_pending() -> bool {
    CHANGED.get()
}

/// Watches the definitions table for changes: any relation's invalidation counts until its OID
/// is known (`relid`). Call it before the first transaction that reads definitions.
pub fn watch_definitions(relid: Option<pg_sys::Oid>) {
    if let Some(relid) = relid {
        DEFINITIONS.set(relid);
    }
    if REGISTERED.replace(true) {
        return;
    }
    // SAFETY: registers a callback that lives as long as the process; it only sets a flag.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache), pg_sys::Datum::from(0));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let definitions = DEFINITIONS.get();
    if relid == pg_sys::InvalidOid || definitions == pg_sys::InvalidOid || relid == definitions {
        CHANGED.set(true);
    }
}

/// Restores what previous workers reported. In a transaction.
pub fn load(health: &mut Health) -> Result<()> {
    let now = Instant::now();
    let reports: Vec<Report> = Spi::connect(|client| {
        client
            .select(
                "SELECT endpoint, state, consecutive_failures,
                        extract(epoch FROM failing_since)::float8,
                        extract(epoch FROM last_success)::float8, last_error
                   FROM outbound_msg.endpoint_health",
                None,
                &[],
            )?
            .map(|row| {
                Ok(Report {
                    endpoint: row.get(1)?.unwrap_or_default(),
                    state: State::parse(&row.get::<String>(2)?.unwrap_or_default()),
                    consecutive_failures: row.get::<i32>(3)?.unwrap_or(0).max(0) as u32,
                    failing_since: row.get::<f64>(4)?.map(time_at),
                    last_success: row.get::<f64>(5)?.map(time_at),
                    last_error: row.get(6)?,
                    requests_in_flight: 0,
                })
            })
            .collect::<std::result::Result<_, pgrx::spi::Error>>()
    })?;
    for report in reports {
        health.restore(report, now);
    }
    Ok(())
}

/// Writes `reports`. In a transaction.
pub fn report(reports: &[Report]) -> Result<()> {
    let epoch = |time: Option<SystemTime>| {
        time.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    };
    let endpoints: Vec<&str> = reports.iter().map(|r| r.endpoint.as_str()).collect();
    let states: Vec<&str> = reports.iter().map(|r| r.state.as_str()).collect();
    let failures: Vec<i32> = reports
        .iter()
        .map(|r| r.consecutive_failures.min(i32::MAX as u32) as i32)
        .collect();
    let failing_since: Vec<Option<f64>> = reports.iter().map(|r| epoch(r.failing_since)).collect();
    let last_success: Vec<Option<f64>> = reports.iter().map(|r| epoch(r.last_success)).collect();
    let last_error: Vec<Option<String>> = reports
        .iter()
        .map(|r| r.last_error.as_deref().map(crate::secrets::recorded_error))
        .collect();
    let in_flight: Vec<i32> = reports
        .iter()
        .map(|r| r.requests_in_flight.min(i32::MAX as usize) as i32)
        .collect();
    Spi::connect_mut(|client| {
        client.update(
            "INSERT INTO outbound_msg.endpoint_health AS h
                 (endpoint, state, consecutive_failures, failing_since, last_success,
                  last_error, requests_in_flight, reported_at)
             SELECT e, s, f, to_timestamp(fs), to_timestamp(ls), le, n, now()
               FROM unnest($1::text[], $2::text[], $3::int[], $4::float8[], $5::float8[],
                           $6::text[], $7::int[]) AS r(e, s, f, fs, ls, le, n)
             ON CONFLICT (endpoint) DO UPDATE
                SET state = excluded.state,
                    consecutive_failures = excluded.consecutive_failures,
                    failing_since = excluded.failing_since,
                    last_success = excluded.last_success,
                    last_error = excluded.last_error,
                    requests_in_flight = excluded.requests_in_flight,
                    reported_at = excluded.reported_at",
            None,
            &[
                endpoints.into(),
                states.into(),
                failures.into(),
                failing_since.into(),
                last_success.into(),
                last_error.into(),
                in_flight.into(),
            ],
        )?;
        Ok(())
    })
}

fn time_at(epoch_seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(epoch_seconds.max(0.0))
}
