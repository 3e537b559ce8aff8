//! The delivery queue, `outbound_msg.notification`: enqueue, claim a batch under a lease,
//! acknowledge, record a failure. Only this module writes the queue.
//!
//! Delivery is at least once. A claim moves `next_attempt_at` past the end of the delivery's
//! lease in a short transaction that commits before any HTTP; the outcome is recorded in another.
//! If the worker dies in between, the lease runs out and the notifications are claimed again,
//! with the same ids.

use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::Result;

/// Queues one notification of `message_id` for the row whose key is `record_id`; returns its
/// queue id.
pub fn enqueue(
    client: &mut SpiClient,
    message_id: i64,
    record_id: &str,
    payload: &str,
) -> Result<i64> {
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

/// Removes every queued notification of a message that is being dropped.
pub fn forget_message(client: &mut SpiClient, message_id: i64) -> Result<()> {
    client.update(
        "DELETE FROM outbound_msg.notification WHERE message_id = $1",
        None,
        &[message_id.into()],
    )?;
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
}

impl Batch {
    /// Queue ids of the notifications in this batch.
    pub fn ids(&self) -> Vec<i64> {
        self.notifications.iter().map(|(id, _)| *id).collect()
    }
}

/// Claims up to `limit` due notifications, oldest first, for `lease`, and groups them into
/// batches of at most `batch_size` notifications of one message. Rows another session holds
/// locked are skipped.
pub fn claim(limit: usize, batch_size: usize, lease: Duration) -> Result<Vec<Batch>> {
    Spi::connect_mut(|client| {
        let rows = client.update(
            "WITH due AS (
                 SELECT id FROM outbound_msg.notification
                  WHERE next_attempt_at <= now()
                  ORDER BY next_attempt_at, id
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED)
             UPDATE outbound_msg.notification n
                SET attempts = n.attempts + 1,
                    last_attempt_at = now(),
                    next_attempt_at = now() + make_interval(secs => $2)
               FROM due, outbound_msg.message m, pg_catalog.pg_class c
              WHERE n.id = due.id AND m.id = n.message_id AND c.oid = m.object
             RETURNING n.id, n.message_id, n.payload, m.endpoint_url, c.relname::text",
            None,
            &[(limit as i64).into(), lease.as_secs_f64().into()],
        )?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            claimed.push(Claimed {
                id: row.get(1)?.unwrap_or_default(),
                message_id: row.get(2)?.unwrap_or_default(),
                payload: row.get(3)?.unwrap_or_default(),
                endpoint_url: row.get(4)?.unwrap_or_default(),
                object_type: row.get(5)?.unwrap_or_default(),
            });
        }
        Ok(into_batches(claimed, batch_size))
    })
}

/// Removes acknowledged notifications from the queue.
pub fn acknowledge(ids: &[i64]) -> Result<()> {
    Spi::connect_mut(|client| {
        client.update(
            "DELETE FROM outbound_msg.notification WHERE id = ANY ($1)",
            None,
            &[ids.to_vec().into()],
        )?;
        Ok(())
    })
}

/// Records a failed delivery: the reason, and when to try again.
pub fn record_failure(ids: &[i64], reason: &str, retry_in: Duration) -> Result<()> {
    Spi::connect_mut(|client| {
        client.update(
            "UPDATE outbound_msg.notification
                SET last_error = $2, next_attempt_at = now() + make_interval(secs => $3)
              WHERE id = ANY ($1)",
            None,
            &[
                ids.to_vec().into(),
                reason.into(),
                retry_in.as_secs_f64().into(),
            ],
        )?;
        Ok(())
    })
}

/// One claimed queue row with what its delivery needs.
struct Claimed {
    id: i64,
    message_id: i64,
    payload: String,
    endpoint_url: String,
    object_type: String,
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
            });
        }
        if let Some(batch) = batches.last_mut() {
            batch.notifications.push((row.id, row.payload));
        }
    }
    by_message.into_values().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, message_id: i64) -> Claimed {
        Claimed {
            id,
            message_id,
            payload: format!("p{id}"),
            endpoint_url: format!("http://e{message_id}/"),
            object_type: "t".into(),
        }
    }

    #[test]
    fn batches_hold_one_message_each_and_respect_the_size() {
        let claimed = vec![row(4, 7), row(2, 8), row(3, 7), row(1, 7), row(5, 8)];
        let batches = into_batches(claimed, 2);
        let shape: Vec<(i64, Vec<i64>)> = batches.iter().map(|b| (b.message_id, b.ids())).collect();
        assert_eq!(shape, vec![(7, vec![1, 3]), (7, vec![4]), (8, vec![2, 5])]);
        assert_eq!(batches[2].endpoint_url, "http://e8/");
    }
}
