//! The delivery queue, `outbound_msg.queue`, and its counters, `message_stats`: write a group
//! of notifications, claim groups under a lease, acknowledge, record a failure (backoff,
//! expiry), retry, discard. Only this module writes them.
//!
//! A queue row holds up to 100 notifications of one message, captured together and sent
//! together; notification `n` of row `r` has the number `r * 100 + n`, its Id on every retry.
//! Delivery is at least once. A claim marks groups `sending` and moves `next_attempt_at` to the
//! end of the delivery's lease, in a short transaction that commits before any HTTP; the outcome
//! is recorded in another. If the worker dies in between, the lease runs out and the groups are
//! claimed again, with the same notification Ids.

pgrx::extension_sql_file!("forget.sql", name = "queue_forget", requires = ["schema"]);

pub mod admin;
mod groups;
pub mod insert;
pub mod new_rows;
mod plans;

use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

pub use groups::{Groups, TextAt, GROUP_BYTES, GROUP_LIMIT};
use new_rows::{tids_at, RowAddress};
use plans::{kept_update, ACKNOWLEDGE, CLAIM, RECORD_FAILURE};

use crate::deliver::wake;
use crate::error::Result;
use crate::secrets;

/// The claim's statement (see [`claim`]).
const CLAIM_SQL: &str = include_str!("claim.sql");

/// The number of notification `position` (from 0) of queue row `row`.
pub fn notification_number(row: i64, position: usize) -> u64 {
    (row * GROUP_LIMIT) as u64 + position as u64
}

/// A claimed queue row: its id, and where its claimed version sits (its ctid). Deliveries
/// find their rows again by ctid, with no index on `id` to keep up on every capture; the id
/// is checked too, so a row moved since (VACUUM FULL) is left to be claimed again rather
/// than mistaken for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    /// Where it lies.
    address: RowAddress,
}

impl Row {
    fn new(id: i64, tid: pg_sys::ItemPointerData) -> Row {
        Row {
            id,
            address: RowAddress::of(tid),
        }
    }

    fn tid(&self) -> pg_sys::ItemPointerData {
        self.address.tid()
    }
}

/// The ctids and the ids of `rows`, as query arguments.
fn tids_and_ids(rows: &[Row]) -> (Vec<pg_sys::ItemPointerData>, Vec<i64>) {
    rows.iter().map(|row| (row.tid(), row.id)).unzip()
}

/// Writes `groups`, one queue row each; returns the rows' ids.
pub fn write_groups(groups: &Groups) -> Result<Vec<i64>> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    wake::after_commit();
    crate::queue::insert::insert(groups)
}

/// Removes the queued notifications and counters of a message that is being dropped (as the
/// DDL event trigger does for a dropped table's, with the same SQL function of the queue's,
/// `src/queue/forget.sql`). Returns how many queued or expired notifications it discarded.
pub fn forget_message(client: &mut SpiClient, message_id: i64) -> Result<i64> {
    Ok(client
        .update(
            "SELECT outbound_msg.forget_queued(ARRAY[$1::bigint])",
            None,
            &[message_id.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// Notifications of one outbound message, to be sent in one SOAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub message_id: i64,
    pub endpoint_url: String,
    /// The table's name, the sObject type.
    pub object_type: String,
    /// Queue rows (groups) in it, oldest first.
    pub rows: Vec<Row>,
    /// Notification numbers and rendered fields, in order.
    pub notifications: Vec<(u64, String)>,
    /// Most attempts among its groups, this one included.
    pub attempts: u32,
    /// The client certificate its message presents, if any.
    pub client_certificate: Option<String>,
}

/// How many notifications a claim may take, and from which messages.
pub struct ClaimLimits<'a> {
    /// Most notifications in all.
    pub total: usize,
    /// The messages that may take notifications now, each with how many at most; no other
    /// message's are claimed (their connections are busy, their endpoint is failing, or the
    /// worker does not know them yet).
    pub allowances: &'a [(i64, usize)],
    pub batch_size: usize,
    /// How long the claimed notifications stay leased to this delivery.
    pub lease: Duration,
}

/// Claims due groups, oldest first, within `limits` (a group is claimed whole when its first
/// notification is within them), and packs them into batches of one message each. The new
/// rows at `new_rows` (see [`new_rows`]) are candidates too:
/// claimed from there, they never enter the index.
///
/// Each message's due groups are read through the `(message_id, next_attempt_at, id)` index,
/// at most its allowance of them: a message whose connections are all busy costs nothing, however
/// large its backlog (a scan in due order would wade through all of it to find other messages'
/// groups), and no claim reads more groups than it could take.
///
/// Only the messages `indexed` (a sorted subset of those allowed, see
/// [`messages_in_index`]) are looked up in the index; new groups are taken for every message
/// allowed.
pub fn claim(limits: &ClaimLimits, new_rows: &[RowAddress], indexed: &[i64]) -> Result<Vec<Batch>> {
    let new_rows = tids_at(new_rows);
    let (allowed_ids, allowed_counts): (Vec<i64>, Vec<i64>) = limits
        .allowances
        .iter()
        .map(|(m, n)| (*m, *n as i64))
        .unzip();
    Spi::connect_mut(|client| {
        let rows = kept_update(
            &CLAIM,
            client,
            CLAIM_SQL,
            &[
                pg_sys::INT8OID,
                pg_sys::INT8ARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::FLOAT8OID,
                pg_sys::TIDARRAYOID,
                pg_sys::INT8ARRAYOID,
            ],
            None,
            &[
                (limits.total as i64).into(),
                allowed_ids.into(),
                allowed_counts.into(),
                limits.lease.as_secs_f64().into(),
                new_rows.into(),
                indexed.to_vec().into(),
            ],
        )?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            claimed.push(Claimed {
                row: Row::new(
                    row.get(2)?.unwrap_or_default(),
                    row.get(1)?.unwrap_or_default(),
                ),
                message_id: row.get(3)?.unwrap_or_default(),
                payloads: row.get(4)?.unwrap_or_default(),
                attempts: row.get::<i32>(5)?.unwrap_or(1).max(1) as u32,
                endpoint_url: row.get(6)?.unwrap_or_default(),
                object_type: row.get(7)?.unwrap_or_default(),
                client_certificate: row.get(8)?,
            });
        }
        Ok(into_batches(claimed, limits.batch_size))
    })
}

/// The messages with groups in the due index (any state but `new`), in order: one index probe
/// each (a loose index scan), however many messages are defined. A claim looks up only those
/// of them it may take from, rather than probing the index for every message allowed.
pub fn messages_in_index() -> Result<Vec<i64>> {
    Spi::connect(|client| {
        client
            .select(
                "WITH RECURSIVE m(id) AS (
                     (SELECT message_id FROM outbound_msg.queue WHERE state <> 'new'
                       ORDER BY message_id LIMIT 1)
                     UNION ALL
                     SELECT (SELECT q.message_id FROM outbound_msg.queue q
                              WHERE q.state <> 'new' AND q.message_id > m.id
                              ORDER BY q.message_id LIMIT 1)
                       FROM m WHERE m.id IS NOT NULL)
                 SELECT id FROM m WHERE id IS NOT NULL",
                None,
                &[],
            )?
            .map(|row| Ok(row.get::<i64>(1)?.unwrap_or_default()))
            .collect()
    })
}

/// Time until the earliest group of a message in `allowed` is due (zero if one is due now),
/// `None` when nothing waits. Other messages' groups do not count: the end of one of their
/// deliveries, or their endpoint's next probe, wakes the worker anyway.
pub fn next_due(allowed: Vec<i64>) -> Result<Option<Duration>> {
    // Clamped here, not with SQL's greatest(): greatest(0, NULL) is 0, which would make an
    // empty queue look due now and keep the worker from ever sleeping. Expired groups wait at
    // 'infinity'.
    let seconds = Spi::get_one_with_args::<f64>(
        "SELECT extract(epoch FROM min(q.next_attempt_at) - clock_timestamp())::float8
           FROM outbound_msg.message m
          CROSS JOIN LATERAL (
                SELECT next_attempt_at FROM outbound_msg.queue
                 WHERE message_id = m.id AND next_attempt_at < 'infinity' AND state <> 'new'
                 ORDER BY next_attempt_at LIMIT 1) q
          WHERE m.id = ANY ($1)",
        &[allowed.into()],
    )?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Whether the queue's statistics are far behind what it holds: they believe fewer groups
/// than a claim just took, or under half the live rows PostgreSQL counted since.
///
/// A queue churns: autovacuum often analyzes it while it is drained, and from then on the
/// planner believes it empty however many groups arrive (PostgreSQL scales the tuple density
/// of the last ANALYZE, zero, by the current size). Planned for one row, a claim against a
/// large backlog read the whole queue for a few groups, until the next autovacuum.
pub fn statistics_behind(claimed_groups: usize) -> Result<bool> {
    let (believed, counted) = Spi::get_two::<f64, i64>(
        "SELECT CASE WHEN c.relpages > 0 AND c.reltuples >= 0
                     THEN c.reltuples::float8 / c.relpages
                          * (pg_relation_size(c.oid) / current_setting('block_size')::int)
                END,
                s.n_live_tup
           FROM pg_catalog.pg_class c
           LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
          WHERE c.oid = 'outbound_msg.queue'::regclass",
    )?;
    let least_held = (claimed_groups as f64).max(counted.unwrap_or(0) as f64 / 2.0);
    Ok(believed.is_some_and(|groups| groups < least_held))
}

/// Analyzes the queue (its payloads are not sampled: milliseconds, about once per burst).
pub fn analyze() -> Result<()> {
    Ok(Spi::run("ANALYZE outbound_msg.queue")?)
}

/// Removes acknowledged groups from the queue and counts their notifications as delivered.
pub fn acknowledge(message_id: i64, rows: &[Row]) -> Result<()> {
    let (tids, ids) = tids_and_ids(rows);
    Spi::connect_mut(|client| {
        kept_update(
            &ACKNOWLEDGE,
            client,
            "WITH gone AS (
                 DELETE FROM outbound_msg.queue WHERE ctid = ANY ($1) AND id = ANY ($3)
                 RETURNING created_at, cardinality(record_ids) AS size)
             INSERT INTO outbound_msg.message_stats AS s
                    (message_id, delivered, last_success, latency_total, last_latency)
             SELECT $2, sum(size), now(), sum((now() - created_at) * size), max(now() - created_at)
               FROM gone
             HAVING count(*) > 0
                AND EXISTS (SELECT 1 FROM outbound_msg.message WHERE id = $2)
             ON CONFLICT (message_id) DO UPDATE
                SET delivered = s.delivered + excluded.delivered,
                    last_success = excluded.last_success,
                    latency_total = s.latency_total + excluded.latency_total,
                    last_latency = excluded.last_latency",
            &[pg_sys::TIDARRAYOID, pg_sys::INT8OID, pg_sys::INT8ARRAYOID],
            None,
            &[tids.into(), message_id.into(), ids.into()],
        )?;
        Ok(())
    })
}

/// Records a failed delivery: the reason, and when to try again, at most `max_age` after the
/// group's capture (or last administrative retry). Past that it is expired: kept with its last
/// error, never tried again unless retried by an administrator.
pub fn record_failure(
    message_id: i64,
    rows: &[Row],
    reason: &str,
    retry_in: Duration,
    max_age: Duration,
) -> Result<()> {
    let (tids, ids) = tids_and_ids(rows);
    let reason = secrets::recorded_error(reason);
    Spi::connect_mut(|client| {
        kept_update(
            &RECORD_FAILURE,
            client,
            "WITH failed AS (
                 UPDATE outbound_msg.queue q
                    SET last_error = $2,
                        state = CASE WHEN now() >= coalesce(q.retried_at, q.created_at) + $4
                                     THEN 'expired' ELSE 'retrying' END,
                        next_attempt_at =
                            CASE WHEN now() >= coalesce(q.retried_at, q.created_at) + $4
                                 THEN 'infinity'
                                 ELSE least(now() + $3, coalesce(q.retried_at, q.created_at) + $4)
                            END
                  WHERE q.ctid = ANY ($1) AND q.id = ANY ($6)
                 RETURNING cardinality(q.record_ids) AS size)
             INSERT INTO outbound_msg.message_stats AS s (message_id, failed_attempts, last_failure)
             SELECT $5, sum(size), now() FROM failed
             HAVING count(*) > 0
                AND EXISTS (SELECT 1 FROM outbound_msg.message WHERE id = $5)
             ON CONFLICT (message_id) DO UPDATE
                SET failed_attempts = s.failed_attempts + excluded.failed_attempts,
                    last_failure = excluded.last_failure",
            &[
                pg_sys::TIDARRAYOID,
                pg_sys::TEXTOID,
                pg_sys::INTERVALOID,
                pg_sys::INTERVALOID,
                pg_sys::INT8OID,
                pg_sys::INT8ARRAYOID,
            ],
            None,
            &[
                tids.into(),
                reason.as_str().into(),
                interval(retry_in).into(),
                interval(max_age).into(),
                message_id.into(),
                ids.into(),
            ],
        )?;
        Ok(())
    })
}

fn interval(duration: Duration) -> pgrx::datum::Interval {
    pgrx::datum::Interval::new(0, 0, duration.as_micros().min(i64::MAX as u128) as i64)
        .unwrap_or(pgrx::datum::Interval::new(0, 0, 0).expect("a zero interval is valid"))
}

/// Which notifications an administrator acts on.
#[derive(Debug, Clone, Copy)]
pub enum Selection {
    /// One notification, by its number.
    One(u64),
    /// Every notification of a message.
    Message(i64),
    /// Every expired notification; of protected messages too only when `protected_too`.
    Expired { protected_too: bool },
}

impl Selection {
    /// The queue rows selected, as a condition on `id`, `message_id` and `state`, and `$1`.
    fn rows(self) -> (&'static str, Option<i64>) {
        match self {
            Selection::One(number) => ("id = $1", Some(number as i64 / GROUP_LIMIT)),
            Selection::Message(id) => ("message_id = $1", Some(id)),
            Selection::Expired {
                protected_too: true,
            } => ("state = 'expired' AND $1::bigint IS NULL", None),
            Selection::Expired {
                protected_too: false,
            } => (
                "state = 'expired' AND $1::bigint IS NULL AND message_id NOT IN
                     (SELECT id FROM outbound_msg.message WHERE protected)",
                None,
            ),
        }
    }
}

/// Whether anything waits in the queue that is not expired (due now or later). In a
/// transaction.
pub fn has_work() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM outbound_msg.queue WHERE state <> 'expired')",
    )
    .ok()
    .flatten()
    .unwrap_or(true)
}

/// The endpoint URL of every message, for the worker's health bookkeeping.
pub fn endpoint_urls() -> Result<Vec<(i64, String)>> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT id, endpoint_url FROM outbound_msg.message",
                None,
                &[],
            )?
            .map(|row| {
                Ok((
                    row.get(1)?.unwrap_or_default(),
                    row.get(2)?.unwrap_or_default(),
                ))
            })
            .collect()
    })
}

/// Hands notifications claimed but not sent (their endpoint may take nothing now) back to the
/// queue, due at once, their attempt not counted.
pub fn release(rows: &[Row]) -> Result<()> {
    let (tids, ids) = tids_and_ids(rows);
    Spi::connect_mut(|client| {
        client.update(
            // `attempts` in SET is the claimed row's, the unsent attempt included.
            "UPDATE outbound_msg.queue
                SET attempts = attempts - 1, next_attempt_at = now(),
                    state = CASE WHEN attempts > 1 THEN 'retrying' ELSE 'queued' END
              WHERE ctid = ANY ($1) AND id = ANY ($2) AND state = 'sending'",
            None,
            &[tids.into(), ids.into()],
        )?;
        Ok(())
    })
}

/// The message of notification number `number`, if it is queued.
pub fn message_of_notification(client: &SpiClient, number: u64) -> Result<Option<i64>> {
    let (row, position) = (number as i64 / GROUP_LIMIT, number as i64 % GROUP_LIMIT);
    let rows = client.select(
        "SELECT message_id FROM outbound_msg.queue WHERE id = $1 AND cardinality(record_ids) > $2",
        Some(1),
        &[row.into(), position.into()],
    )?;
    // An empty result is `Err(InvalidPosition)`: no such notification.
    Ok(rows.first().get_one::<i64>().unwrap_or_default())
}

/// Makes the selected notifications due now, with a fresh `max_age` (a single notification is
/// retried with its group, which is sent together); groups in flight are left to their
/// delivery. Returns how many notifications were rescheduled.
pub fn retry(client: &mut SpiClient, selection: Selection) -> Result<i64> {
    wake::after_commit();
    let (condition, arg) = selection.rows();
    Ok(client
        .update(
            &format!(
                "WITH retried AS (
                     UPDATE outbound_msg.queue
                        SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'retrying' END,
                            next_attempt_at = now(), retried_at = now()
                      WHERE {condition}
                        AND NOT (state = 'sending' AND next_attempt_at > now())
                     RETURNING cardinality(record_ids) AS size)
                 SELECT coalesce(sum(size), 0)::bigint FROM retried"
            ),
            Some(1),
            &[arg.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// Deletes the selected notifications without sending them. Returns how many.
pub fn discard(client: &mut SpiClient, selection: Selection) -> Result<i64> {
    if let Selection::One(number) = selection {
        return discard_one(client, number);
    }
    let (condition, arg) = selection.rows();
    Ok(client
        .update(
            &format!(
                "WITH discarded AS (
                     DELETE FROM outbound_msg.queue WHERE {condition}
                     RETURNING cardinality(record_ids) AS size)
                 SELECT coalesce(sum(size), 0)::bigint FROM discarded"
            ),
            Some(1),
            &[arg.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// Removes one notification from its group (the group goes when it was the last one).
fn discard_one(client: &mut SpiClient, number: u64) -> Result<i64> {
    let (row, position) = (number as i64 / GROUP_LIMIT, number as i64 % GROUP_LIMIT + 1);
    let removed = client
        .update(
            "UPDATE outbound_msg.queue
                SET record_ids = record_ids[:$2 - 1] || record_ids[$2 + 1:],
                    payloads = payloads[:$2 - 1] || payloads[$2 + 1:]
              WHERE id = $1 AND cardinality(record_ids) >= $2
             RETURNING cardinality(record_ids)",
            Some(1),
            &[row.into(), (position as i32).into()],
        )?
        .first()
        .get_one::<i32>();
    match removed {
        Ok(Some(0)) => {
            client.update(
                "DELETE FROM outbound_msg.queue WHERE id = $1",
                None,
                &[row.into()],
            )?;
            Ok(1)
        }
        Ok(Some(_)) => Ok(1),
        _ => Ok(0),
    }
}

/// One claimed queue row with what its delivery needs.
struct Claimed {
    row: Row,
    message_id: i64,
    payloads: Vec<String>,
    attempts: u32,
    endpoint_url: String,
    object_type: String,
    client_certificate: Option<String>,
}

/// Groups claimed rows by message, each message's rows in queue order (`UPDATE ... RETURNING`
/// returns them in no particular order), and packs them whole into batches of at most
/// `batch_size` notifications (a larger group travels alone).
fn into_batches(mut claimed: Vec<Claimed>, batch_size: usize) -> Vec<Batch> {
    claimed.sort_unstable_by_key(|claimed| claimed.row.id);
    let mut by_message: BTreeMap<i64, Vec<Batch>> = BTreeMap::new();
    for row in claimed {
        let batches = by_message.entry(row.message_id).or_default();
        let bytes = |payloads: &[String]| payloads.iter().map(String::len).sum::<usize>();
        let fits = batches.last().is_some_and(|b| {
            b.notifications.len() + row.payloads.len() <= batch_size
                && b.notifications.iter().map(|(_, p)| p.len()).sum::<usize>()
                    + bytes(&row.payloads)
                    <= GROUP_BYTES
        });
        if !fits {
            batches.push(Batch {
                message_id: row.message_id,
                endpoint_url: row.endpoint_url,
                object_type: row.object_type,
                rows: Vec::new(),
                notifications: Vec::with_capacity(batch_size),
                attempts: 0,
                client_certificate: row.client_certificate,
            });
        }
        if let Some(batch) = batches.last_mut() {
            batch.rows.push(row.row);
            batch.attempts = batch.attempts.max(row.attempts);
            for (position, payload) in row.payloads.into_iter().enumerate() {
                batch
                    .notifications
                    .push((notification_number(row.row.id, position), payload));
            }
        }
    }
    by_message.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, message_id: i64, size: usize, attempts: u32) -> Claimed {
        Claimed {
            row: Row {
                id,
                address: RowAddress::at(id as u32, 1),
            },
            message_id,
            payloads: (0..size).map(|i| format!("p{id}.{i}")).collect(),
            attempts,
            endpoint_url: format!("http://e{message_id}/"),
            object_type: "t".into(),
            client_certificate: None,
        }
    }

    #[test]
    fn groups_are_packed_whole_per_message_in_queue_order() {
        let claimed = vec![
            row(4, 7, 1, 1),
            row(2, 8, 2, 1),
            row(3, 7, 2, 3),
            row(1, 7, 1, 1),
        ];
        let batches = into_batches(claimed, 3);
        let shape: Vec<(i64, Vec<i64>, usize, u32)> = batches
            .iter()
            .map(|b| {
                (
                    b.message_id,
                    b.rows.iter().map(|r| r.id).collect(),
                    b.notifications.len(),
                    b.attempts,
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (7, vec![1, 3], 3, 3),
                (7, vec![4], 1, 1),
                (8, vec![2], 2, 1)
            ]
        );
        assert_eq!(batches[0].notifications[1], (300, "p3.0".to_string()));
        assert_eq!(batches[2].endpoint_url, "http://e8/");
    }

    #[test]
    fn a_group_larger_than_the_batch_size_travels_alone() {
        let batches = into_batches(vec![row(1, 7, 5, 1), row(2, 7, 1, 1)], 2);
        let sizes: Vec<usize> = batches.iter().map(|b| b.notifications.len()).collect();
        assert_eq!(sizes, vec![5, 1]);
    }

    #[test]
    fn notifications_are_grouped_per_message_in_capture_order_and_size() {
        let mut groups = Groups::new(2);
        for (message, record) in [(7, "a"), (8, "b"), (7, "c"), (7, "d"), (8, "e")] {
            groups.push(message, record, &format!("p{record}"));
        }
        let shape: Vec<(i64, Vec<&str>)> = groups
            .iter()
            .map(|g| (g.message_id(), g.record_ids().collect()))
            .collect();
        assert_eq!(
            shape,
            vec![(7, vec!["a", "c"]), (8, vec!["b", "e"]), (7, vec!["d"])]
        );
        let second: Vec<&str> = groups.iter().nth(1).unwrap().payloads().collect();
        assert_eq!(second, vec!["pb", "pe"]);
        assert_eq!(Groups::new(1000).size, GROUP_LIMIT as usize);
    }

    #[test]
    fn groups_are_split_by_size_as_well_as_count() {
        let large = "y".repeat(GROUP_BYTES / 3);
        let mut groups = Groups::new(100);
        for id in 0..7 {
            groups.push(1, &id.to_string(), &large);
        }
        groups.push(1, "7", "small");
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![2, 2, 2, 2]);
        let alone = "z".repeat(GROUP_BYTES + 1);
        groups.push(1, "8", &alone);
        groups.push(1, "9", "small");
        let sizes: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        assert_eq!(sizes, vec![2, 2, 2, 2, 1, 1]);
    }

    #[test]
    fn notification_numbers_encode_row_and_position() {
        assert_eq!(notification_number(0, 0), 0);
        assert_eq!(notification_number(42, 7), 4207);
        assert_eq!(notification_number(42, 99), 4299);
    }
}
