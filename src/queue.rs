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

use std::collections::BTreeMap;
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::Result;
use crate::secrets;
use crate::worker::wake;

/// Notifications a queue row holds at most, and the factor of notification numbers.
pub const GROUP_LIMIT: i64 = 100;

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
    /// Its ctid, as [`address_of`] gives it.
    address: u64,
}

impl Row {
    fn new(id: i64, tid: pg_sys::ItemPointerData) -> Row {
        Row {
            id,
            address: address_of(tid),
        }
    }

    fn tid(&self) -> pg_sys::ItemPointerData {
        tid_at(self.address)
    }
}

/// The ctids and the ids of `rows`, as query arguments.
fn tids_and_ids(rows: &[Row]) -> (Vec<pg_sys::ItemPointerData>, Vec<i64>) {
    rows.iter().map(|row| (row.tid(), row.id)).unzip()
}

/// Groups of notifications to write, in the order their first notification came: each a
/// message and its notifications' record ids and payloads. Their text sits in one buffer, not
/// in two allocations a notification.
pub struct Groups {
    text: String,
    groups: Vec<Group>,
    size: usize,
}

/// One group: a message, and where its notifications' texts sit in the groups' buffer.
struct Group {
    message_id: i64,
    notifications: Vec<TextAt>,
    /// Bytes of its record ids and payloads.
    bytes: usize,
}

/// Most bytes of record ids and payloads in one group, and in one batch sent together, unless a
/// single notification is larger (it then goes alone): far below the 1 GB PostgreSQL stores in
/// one value, and a SOAP message a listener can take.
pub const GROUP_BYTES: usize = 16 << 20;

/// Where a notification's record id and then its payload sit in a text buffer, one after the
/// other.
#[derive(Clone, Copy)]
pub struct TextAt {
    pub start: usize,
    pub payload_start: usize,
    pub end: usize,
}

impl TextAt {
    pub fn record_id(self, text: &str) -> &str {
        &text[self.start..self.payload_start]
    }

    pub fn payload(self, text: &str) -> &str {
        &text[self.payload_start..self.end]
    }
}

impl Groups {
    /// Groups of at most `size` notifications (capped at [`GROUP_LIMIT`]).
    pub fn new(size: usize) -> Groups {
        Groups {
            text: String::new(),
            groups: Vec::new(),
            size: size.clamp(1, GROUP_LIMIT as usize),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// How many groups (queue rows) there are.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Makes room for `bytes` more of record ids and payloads.
    pub fn reserve(&mut self, bytes: usize) {
        self.text.reserve(bytes);
    }

    /// Groups of at most `size` notifications whose record ids and payloads are in `text`
    /// already, added with [`Groups::push_written`]: no copy of them.
    pub fn over(size: usize, text: String) -> Groups {
        Groups {
            text,
            ..Groups::new(size)
        }
    }

    /// The text buffer, for its memory to be used again.
    pub fn into_text(self) -> String {
        self.text
    }

    /// Adds a notification of `message_id` to that message's open group, or a new one.
    pub fn push(&mut self, message_id: i64, record_id: &str, payload: &str) {
        let start = self.text.len();
        self.text.push_str(record_id);
        let payload_start = self.text.len();
        self.text.push_str(payload);
        let end = self.text.len();
        self.push_written(
            message_id,
            TextAt {
                start,
                payload_start,
                end,
            },
        );
    }

    /// Adds a notification of `message_id` whose texts are `at` in the text.
    pub fn push_written(&mut self, message_id: i64, at: TextAt) {
        // A message's open group is its latest one, among the last groups of as many messages
        // as are interleaved: found from the end in a step or two, without a map to build.
        let open = self.groups.iter().rposition(|g| g.message_id == message_id);
        let bytes = at.end - at.start;
        let index = match open {
            Some(index)
                if self.groups[index].notifications.len() < self.size
                    && self.groups[index].bytes + bytes <= GROUP_BYTES =>
            {
                index
            }
            _ => {
                // Grown as filled: most statements change one row.
                self.groups.push(Group {
                    message_id,
                    notifications: Vec::new(),
                    bytes: 0,
                });
                self.groups.len() - 1
            }
        };
        self.groups[index].notifications.push(at);
        self.groups[index].bytes += bytes;
    }

    /// Each group, with its notifications' record ids and payloads.
    pub fn iter(&self) -> impl Iterator<Item = GroupTexts<'_>> {
        self.groups.iter().map(|group| GroupTexts {
            group,
            text: &self.text,
        })
    }
}

/// A group and the text its notifications are in.
#[derive(Clone, Copy)]
pub struct GroupTexts<'a> {
    group: &'a Group,
    text: &'a str,
}

impl<'a> GroupTexts<'a> {
    pub fn message_id(&self) -> i64 {
        self.group.message_id
    }

    /// How many notifications it holds.
    pub fn len(&self) -> usize {
        self.group.notifications.len()
    }

    pub fn record_ids(&self) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        self.each(TextAt::record_id)
    }

    pub fn payloads(&self) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        self.each(TextAt::payload)
    }

    /// `part` of each notification's text.
    fn each(
        &self,
        part: fn(TextAt, &'a str) -> &'a str,
    ) -> impl Iterator<Item = &'a str> + Clone + use<'a> {
        let text = self.text;
        self.group
            .notifications
            .iter()
            .map(move |&at| part(at, text))
    }
}

type KeptPlan = std::cell::OnceCell<pgrx::spi::OwnedPreparedStatement>;

thread_local! {
    // Statements planned once per backend and kept: PostgreSQL replans them itself when what
    // they use changes (the extension dropped and created again, say).
    static CLAIM: KeptPlan = const { KeptPlan::new() };
    static ADMIT: KeptPlan = const { KeptPlan::new() };
    static ACKNOWLEDGE: KeptPlan = const { KeptPlan::new() };
    static RECORD_FAILURE: KeptPlan = const { KeptPlan::new() };
}

/// Executes the kept plan of `sql` (argument types `types`), planning it on first use.
fn kept_update<'conn>(
    plan: &'static std::thread::LocalKey<KeptPlan>,
    client: &mut SpiClient<'conn>,
    sql: &str,
    types: &[pg_sys::Oid],
    limit: Option<libc::c_long>,
    args: &[pgrx::datum::DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'conn>> {
    with_kept_plan(plan, client, sql, types, |client, plan| {
        Ok(client.update(plan, limit, args)?)
    })
}

/// Runs `run` with the kept plan of `sql` (argument types `types`), planning it on first use.
fn with_kept_plan<'conn, R>(
    plan: &'static std::thread::LocalKey<KeptPlan>,
    client: &mut SpiClient<'conn>,
    sql: &str,
    types: &[pg_sys::Oid],
    run: impl FnOnce(&mut SpiClient<'conn>, &pgrx::spi::OwnedPreparedStatement) -> Result<R>,
) -> Result<R> {
    plan.with(|cell| {
        if cell.get().is_none() {
            let types: Vec<pgrx::PgOid> = types.iter().map(|t| pgrx::PgOid::from(*t)).collect();
            let kept = client.prepare_mut(sql, &types)?.keep();
            let _ = cell.set(kept);
        }
        run(client, cell.get().expect("the plan was just set"))
    })
}

/// Writes `groups`, one queue row each; returns the rows' ids.
pub fn write_groups(groups: &Groups) -> Result<Vec<i64>> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    wake::after_commit();
    crate::queue_insert::insert(groups)
}

/// Removes the queued notifications and counters of a message that is being dropped.
/// Returns how many queued or expired notifications it discarded.
pub fn forget_message(client: &mut SpiClient, message_id: i64) -> Result<i64> {
    crate::pending::forget_message(message_id);
    let discarded = client
        .update(
            "WITH gone AS (DELETE FROM outbound_msg.queue WHERE message_id = $1
                           RETURNING cardinality(record_ids) AS size)
             SELECT coalesce(sum(size), 0)::bigint FROM gone",
            None,
            &[message_id.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0);
    client.update(
        "DELETE FROM outbound_msg.message_stats WHERE message_id = $1",
        None,
        &[message_id.into()],
    )?;
    Ok(discarded)
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
/// groups at `new_groups` (addresses `block << 16 | offset`, see [`admit`]) are candidates too:
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
pub fn claim(limits: &ClaimLimits, new_groups: &[u64], indexed: &[i64]) -> Result<Vec<Batch>> {
    let new_groups = tids_at(new_groups);
    let (allowed_ids, allowed_counts): (Vec<i64>, Vec<i64>) = limits
        .allowances
        .iter()
        .map(|(m, n)| (*m, *n as i64))
        .unzip();
    Spi::connect_mut(|client| {
        let rows = kept_update(
            &CLAIM,
            client,
            "WITH allowance AS (
                 SELECT p.message_id, p.n
                   FROM unnest($2::bigint[], $3::bigint[]) AS p(message_id, n)
                  WHERE p.n > 0),
             scan AS (
                 SELECT q.ctid, q.id, q.message_id, q.next_attempt_at, a.n AS allowed,
                        cardinality(q.record_ids) AS size
                   FROM allowance a
                  CROSS JOIN LATERAL (
                        SELECT ctid, id, message_id, next_attempt_at, record_ids
                          FROM outbound_msg.queue
                         WHERE message_id = a.message_id AND next_attempt_at <= now()
                           AND state <> 'expired' AND state <> 'new'
                         ORDER BY next_attempt_at, id
                         LIMIT least(a.n, $1)) q
                  WHERE a.message_id = ANY ($6)
                 UNION ALL
                 SELECT q.ctid, q.id, q.message_id, q.next_attempt_at, a.n,
                        cardinality(q.record_ids)
                   FROM outbound_msg.queue q
                   JOIN allowance a ON a.message_id = q.message_id
                  WHERE q.ctid = ANY ($5) AND q.state = 'new'),
             running AS (
                 SELECT ctid, size, allowed,
                        sum(size) OVER (PARTITION BY message_id ORDER BY next_attempt_at, id)
                            AS message_total,
                        sum(size) OVER (ORDER BY next_attempt_at, id) AS total
                   FROM scan),
             locked AS (
                 SELECT q.ctid FROM outbound_msg.queue q
                  WHERE q.ctid = ANY (ARRAY(
                            SELECT r.ctid FROM running r
                             WHERE r.total - r.size < $1
                               AND r.message_total - r.size < r.allowed))
                    FOR UPDATE SKIP LOCKED)
             UPDATE outbound_msg.queue q
                SET attempts = q.attempts + 1,
                    last_attempt_at = now(),
                    state = 'sending',
                    next_attempt_at = now() + make_interval(secs => $4)
               FROM outbound_msg.message m
              WHERE q.ctid = ANY (ARRAY(SELECT ctid FROM locked)) AND m.id = q.message_id
             RETURNING q.ctid, q.id, q.message_id, q.payloads, q.attempts, m.endpoint_url,
                       (SELECT c.relname::text FROM pg_catalog.pg_class c
                         WHERE c.oid = m.object),
                       m.client_certificate",
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
                new_groups.into(),
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

/// Moves the new groups at `addresses` (`block << 16 | offset`) into the due index (state
/// `queued`), so that claims find them: those a claim cannot take while their message's
/// connections are busy. A new group is in no index: every capturing transaction saves an
/// index insert, and the worker, which learns from the committing transactions where their
/// rows are, claims most of them from there. Returns the addresses of new groups another
/// transaction has locked, to be tried again.
pub fn admit(addresses: &[u64]) -> Result<Vec<u64>> {
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
        rows.map(|row| Ok(address_of(row.get(1)?.unwrap_or_default())))
            .collect()
    })
}

/// A new group found at an address: its message, and how many notifications it holds.
pub struct NewGroup {
    pub address: u64,
    pub message_id: i64,
    pub size: usize,
}

/// Those of the groups at `addresses` that are still new (no claim took them).
pub fn still_new(addresses: &[u64]) -> Result<Vec<NewGroup>> {
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
                Ok(NewGroup {
                    address: address_of(row.get(1)?.unwrap_or_default()),
                    message_id: row.get(2)?.unwrap_or_default(),
                    size: row.get::<i32>(3)?.unwrap_or(1).max(1) as usize,
                })
            })
            .collect()
    })
}

/// [`announcement`]s of at most `limit` new groups, in the order they lie, from the start of
/// `block` on; and the block to go on from when there were `limit` (`None`: none are left).
pub fn sweep(block: u32, limit: usize) -> Result<(Vec<u64>, Option<u32>)> {
    let found: Vec<u64> = Spi::connect(|client| {
        client
            .select(
                "SELECT ctid, cardinality(record_ids) FROM outbound_msg.queue
                  WHERE ctid >= $1 AND state = 'new' LIMIT $2",
                None,
                &[tid_at(u64::from(block) << 16).into(), (limit as i64).into()],
            )?
            .map(|row| {
                let size = row.get::<i32>(2)?.unwrap_or(1).max(1) as usize;
                Ok(announcement(row.get(1)?.unwrap_or_default(), size))
            })
            .collect::<Result<_>>()
    })?;
    let more_from = (found.len() >= limit)
        .then(|| found.iter().map(|&a| (announced(a).0 >> 16) as u32).max())
        .flatten();
    Ok((found, more_from))
}

/// The row address `block << 16 | offset` as a ctid.
fn tid_at(address: u64) -> pg_sys::ItemPointerData {
    let mut tid = pg_sys::ItemPointerData::default();
    pgrx::itemptr::item_pointer_set_all(&mut tid, (address >> 16) as u32, address as u16);
    tid
}

/// The row addresses `addresses` as ctids, a query argument.
fn tids_at(addresses: &[u64]) -> Vec<pg_sys::ItemPointerData> {
    addresses.iter().map(|&address| tid_at(address)).collect()
}

/// What a committing transaction tells its worker of a new group: its address, and in the top
/// 16 bits how many notifications it holds (so that a claim is offered as many as it can take).
pub fn announcement(tid: pg_sys::ItemPointerData, notifications: usize) -> u64 {
    address_of(tid) | ((notifications.min(0xFFFF) as u64) << 48)
}

/// The address and the number of notifications of an [`announcement`].
pub fn announced(announcement: u64) -> (u64, usize) {
    (
        announcement & ((1 << 48) - 1),
        (announcement >> 48) as usize,
    )
}

/// A ctid as the row address `block << 16 | offset`.
pub fn address_of(tid: pg_sys::ItemPointerData) -> u64 {
    let (block, offset) = pgrx::itemptr::item_pointer_get_both(tid);
    (u64::from(block) << 16) | u64::from(offset)
}

/// The queue's storage (its relfilenode), locked for the rest of the transaction. VACUUM FULL,
/// CLUSTER and TRUNCATE give it a new one and move every row: row addresses from before no
/// longer hold.
pub fn storage() -> Result<u32> {
    let relid = crate::catalog::required_relation(c"queue")?;
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

/// Time until the earliest group of a message in `allowed` is due (zero if one is due now),
/// `None` when nothing waits. Other messages' groups do not count: the end of one of their
/// deliveries, or their endpoint's next probe, wakes the worker anyway.
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
                address: (id as u64) << 16 | 1,
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
