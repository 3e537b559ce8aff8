//! The delivery queue, `outbound_msg.notification`, and its counters, `message_stats`: enqueue,
//! claim under a lease, acknowledge, record a failure (backoff, expiry), retry, discard. Only
//! this module writes them.
//!
//! Delivery is at least once. A claim marks notifications `sending` and moves `next_attempt_at`
//! to the end of the delivery's lease, in a short transaction that commits before any HTTP; the
//! outcome is recorded in another. If the worker dies in between, the lease runs out and the
//! notifications are claimed again, with the same ids.

use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::Result;
use crate::worker::wake;

/// Queues one notification of `message_id` for the row whose key is `record_id`; returns its
/// queue id.
pub fn enqueue(
    client: &mut SpiClient,
    message_id: i64,
    record_id: &str,
    payload: &str,
) -> Result<i64> {
    wake::after_commit();
    Ok(client
        .update(
            "INSERT INTO outbound_msg.notification (message_id, record_id, payload)
             VALUES ($1, $2, $3) RETURNING id",
            Some(1),
            &[message_id.into(), record_id.into(), payload.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or_default())
}

/// Removes the queued notifications and counters of a message that is being dropped.
pub fn forget_message(client: &mut SpiClient, message_id: i64) -> Result<()> {
    for table in ["notification", "message_stats"] {
        client.update(
            &format!("DELETE FROM outbound_msg.{table} WHERE message_id = $1"),
            None,
            &[message_id.into()],
        )?;
    }
    Ok(())
}

/// Notifications of one outbound message, to be sent in one SOAP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub message_id: i64,
    pub endpoint_url: String,
    /// The table's name, the sObject type.
    pub object_type: String,
    /// Queue ids and rendered fields, oldest first.
    pub notifications: Vec<(i64, String)>,
    /// Most attempts among its notifications, this one included.
    pub attempts: u32,
    /// The client certificate its message presents, if any.
    pub client_certificate: Option<String>,
}

impl Batch {
    /// Queue ids of the notifications in this batch.
    pub fn ids(&self) -> Vec<i64> {
        self.notifications.iter().map(|(id, _)| *id).collect()
    }
}

/// How many notifications a claim may take, and from which messages.
pub struct ClaimLimits<'a> {
    /// Most notifications in all.
    pub total: usize,
    /// Most notifications of any one message not listed in `per_message`.
    pub per_message: usize,
    /// Messages with a smaller allowance (some of their batches are in flight); 0 excludes.
    pub reduced: &'a [(i64, usize)],
    pub batch_size: usize,
    /// How long the claimed notifications stay leased to this delivery.
    pub lease: Duration,
}

/// Claims due notifications, oldest first, within `limits`, and groups them into batches of
/// one message each. Rows another session holds locked are skipped.
pub fn claim(limits: &ClaimLimits) -> Result<Vec<Batch>> {
    let excluded: Vec<i64> = limits
        .reduced
        .iter()
        .filter(|(_, n)| *n == 0)
        .map(|(m, _)| *m)
        .collect();
    let (reduced_ids, reduced_rows): (Vec<i64>, Vec<i32>) =
        limits.reduced.iter().map(|(m, n)| (*m, *n as i32)).unzip();
    Spi::connect_mut(|client| {
        let rows = client.update(
            "WITH scan AS (
                 SELECT id, message_id, next_attempt_at FROM outbound_msg.notification
                  WHERE next_attempt_at <= now() AND state <> 'expired'
                    AND message_id <> ALL ($2)
                  ORDER BY next_attempt_at, id
                  LIMIT $1),
             ranked AS (
                 SELECT id, message_id,
                        row_number() OVER (PARTITION BY message_id ORDER BY next_attempt_at, id) AS rank
                   FROM scan),
             allowed AS (
                 SELECT r.id FROM ranked r
                  WHERE r.rank <= coalesce((SELECT p.rows FROM unnest($3::bigint[], $4::int[])
                                                 AS p(message_id, rows)
                                             WHERE p.message_id = r.message_id), $5)),
             locked AS (
                 SELECT n.id FROM outbound_msg.notification n JOIN allowed a ON a.id = n.id
                    FOR UPDATE OF n SKIP LOCKED)
             UPDATE outbound_msg.notification n
                SET attempts = n.attempts + 1,
                    last_attempt_at = now(),
                    state = 'sending',
                    next_attempt_at = now() + make_interval(secs => $6)
               FROM locked, outbound_msg.message m, pg_catalog.pg_class c
              WHERE n.id = locked.id AND m.id = n.message_id AND c.oid = m.object
             RETURNING n.id, n.message_id, n.payload, n.attempts, m.endpoint_url, c.relname::text,
                       m.client_certificate",
            None,
            &[
                (limits.total as i64).into(),
                excluded.into(),
                reduced_ids.into(),
                reduced_rows.into(),
                (limits.per_message as i64).into(),
                limits.lease.as_secs_f64().into(),
            ],
        )?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            claimed.push(Claimed {
                id: row.get(1)?.unwrap_or_default(),
                message_id: row.get(2)?.unwrap_or_default(),
                payload: row.get(3)?.unwrap_or_default(),
                attempts: row.get::<i32>(4)?.unwrap_or(1).max(1) as u32,
                endpoint_url: row.get(5)?.unwrap_or_default(),
                object_type: row.get(6)?.unwrap_or_default(),
                client_certificate: row.get(7)?,
            });
        }
        Ok(into_batches(claimed, limits.batch_size))
    })
}

/// Time until the earliest notification is due (zero if one is due now), `None` when nothing
/// waits.
pub fn next_due() -> Result<Option<Duration>> {
    let seconds = Spi::get_one::<f64>(
        "SELECT greatest(0, extract(epoch FROM min(next_attempt_at) - clock_timestamp()))::float8
           FROM outbound_msg.notification WHERE state <> 'expired'",
    )?;
    Ok(seconds.map(Duration::from_secs_f64))
}

/// Removes acknowledged notifications from the queue and counts them as delivered.
pub fn acknowledge(message_id: i64, ids: &[i64]) -> Result<()> {
    Spi::connect_mut(|client| {
        client.update(
            "WITH gone AS (
                 DELETE FROM outbound_msg.notification WHERE id = ANY ($1) RETURNING created_at)
             INSERT INTO outbound_msg.message_stats AS s
                    (message_id, delivered, last_success, latency_total, last_latency)
             SELECT $2, count(*), now(), sum(now() - created_at), max(now() - created_at)
               FROM gone
             HAVING count(*) > 0
                AND EXISTS (SELECT 1 FROM outbound_msg.message WHERE id = $2)
             ON CONFLICT (message_id) DO UPDATE
                SET delivered = s.delivered + excluded.delivered,
                    last_success = excluded.last_success,
                    latency_total = s.latency_total + excluded.latency_total,
                    last_latency = excluded.last_latency",
            None,
            &[ids.to_vec().into(), message_id.into()],
        )?;
        Ok(())
    })
}

/// Records a failed delivery: the reason, and when to try again, at most `max_age` after the
/// notification's capture (or last administrative retry). Past that it is expired: kept with
/// its last error, never tried again unless retried by an administrator.
pub fn record_failure(
    message_id: i64,
    ids: &[i64],
    reason: &str,
    retry_in: Duration,
    max_age: Duration,
) -> Result<()> {
    Spi::connect_mut(|client| {
        client.update(
            "WITH failed AS (
                 UPDATE outbound_msg.notification n
                    SET last_error = $2,
                        state = CASE WHEN now() >= coalesce(n.retried_at, n.created_at) + $4
                                     THEN 'expired' ELSE 'retrying' END,
                        next_attempt_at =
                            CASE WHEN now() >= coalesce(n.retried_at, n.created_at) + $4
                                 THEN 'infinity'
                                 ELSE least(now() + $3, coalesce(n.retried_at, n.created_at) + $4)
                            END
                  WHERE n.id = ANY ($1)
                 RETURNING n.id)
             INSERT INTO outbound_msg.message_stats AS s (message_id, failed_attempts, last_failure)
             SELECT $5, count(*), now() FROM failed
             HAVING count(*) > 0
                AND EXISTS (SELECT 1 FROM outbound_msg.message WHERE id = $5)
             ON CONFLICT (message_id) DO UPDATE
                SET failed_attempts = s.failed_attempts + excluded.failed_attempts,
                    last_failure = excluded.last_failure",
            None,
            &[
                ids.to_vec().into(),
                reason.into(),
                interval(retry_in).into(),
                interval(max_age).into(),
                message_id.into(),
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
    /// One notification, by queue id.
    One(i64),
    /// Every notification of a message.
    Message(i64),
    /// Every expired notification.
    Expired,
}

impl Selection {
    fn condition(self) -> (&'static str, Option<i64>) {
        match self {
            Selection::One(id) => ("id = $1", Some(id)),
            Selection::Message(id) => ("message_id = $1", Some(id)),
            Selection::Expired => ("state = 'expired' AND $1::bigint IS NULL", None),
        }
    }
}

/// Makes the selected notifications due now, with a fresh `max_age`; notifications in flight
/// are left to their delivery. Returns how many were rescheduled.
pub fn retry(client: &mut SpiClient, selection: Selection) -> Result<i64> {
    wake::after_commit();
    let (condition, arg) = selection.condition();
    Ok(client
        .update(
            &format!(
                "WITH retried AS (
                     UPDATE outbound_msg.notification
                        SET state = CASE WHEN attempts = 0 THEN 'queued' ELSE 'retrying' END,
                            next_attempt_at = now(), retried_at = now()
                      WHERE {condition}
                        AND NOT (state = 'sending' AND next_attempt_at > now())
                     RETURNING 1)
                 SELECT count(*) FROM retried"
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
    let (condition, arg) = selection.condition();
    Ok(client
        .update(
            &format!(
                "WITH discarded AS (
                     DELETE FROM outbound_msg.notification WHERE {condition} RETURNING 1)
                 SELECT count(*) FROM discarded"
            ),
            Some(1),
            &[arg.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

/// One claimed queue row with what its delivery needs.
struct Claimed {
    id: i64,
    message_id: i64,
    payload: String,
    attempts: u32,
    endpoint_url: String,
    object_type: String,
    client_certificate: Option<String>,
}

/// Groups claimed rows by message, each message's rows in queue order (`UPDATE ... RETURNING`
/// returns them in no particular order), and cuts each group into batches of at most
/// `batch_size`.
fn into_batches(mut claimed: Vec<Claimed>, batch_size: usize) -> Vec<Batch> {
    claimed.sort_unstable_by_key(|row| row.id);
    let mut by_message: BTreeMap<i64, Vec<Batch>> = BTreeMap::new();
    for row in claimed {
        let batches = by_message.entry(row.message_id).or_default();
        if batches
            .last()
            .is_none_or(|b| b.notifications.len() >= batch_size)
        {
            batches.push(Batch {
                message_id: row.message_id,
                endpoint_url: row.endpoint_url,
                object_type: row.object_type,
                notifications: Vec::with_capacity(batch_size),
                attempts: 0,
                client_certificate: row.client_certificate.clone(),
            });
        }
        if let Some(batch) = batches.last_mut() {
            batch.notifications.push((row.id, row.payload));
            batch.attempts = batch.attempts.max(row.attempts);
        }
    }
    by_message.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, message_id: i64, attempts: u32) -> Claimed {
        Claimed {
            id,
            message_id,
            payload: format!("p{id}"),
            attempts,
            endpoint_url: format!("http://e{message_id}/"),
            object_type: "t".into(),
            client_certificate: None,
        }
    }

    #[test]
    fn batches_hold_one_message_each_and_respect_the_size() {
        let claimed = vec![
            row(4, 7, 1),
            row(2, 8, 1),
            row(3, 7, 3),
            row(1, 7, 1),
            row(5, 8, 2),
        ];
        let batches = into_batches(claimed, 2);
        let shape: Vec<(i64, Vec<i64>, u32)> = batches
            .iter()
            .map(|b| (b.message_id, b.ids(), b.attempts))
            .collect();
        assert_eq!(
            shape,
            vec![(7, vec![1, 3], 3), (7, vec![4], 1), (8, vec![2, 5], 2)]
        );
        assert_eq!(batches[2].endpoint_url, "http://e8/");
    }
}
