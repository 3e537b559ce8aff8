//! Inserts queue rows the way logical replication applies a replicated INSERT: each row is
//! formed here and handed to the table, its indexes and any triggers on it, with no INSERT
//! statement to plan, start, run and end. The capture path writes one queue row per statement
//! that changed rows, and for a single-row statement the executor's set-up and tear-down of an
//! `INSERT ... RETURNING` cost more than the row itself.
//!
//! NOT NULL, indexes (unique and partial ones included) and triggers still apply, through
//! `ExecSimpleRelationInsert`, as they would for an INSERT. Access rights are not checked: only
//! the extension writes the queue, as its owner.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use crate::error::{Error, Kind, Result};

/// A queue row to insert: a message and its notifications' record ids and payloads.
pub type NewRow = (i64, Vec<String>, Vec<String>);

/// The queue's columns this module fills; every other column starts NULL.
#[derive(Clone, Copy)]
enum Column {
    Id,
    MessageId,
    RecordIds,
    Payloads,
    CreatedAt,
    State,
    Attempts,
    NextAttemptAt,
}

impl Column {
    fn named(name: &str) -> Option<Column> {
        Some(match name {
            "id" => Column::Id,
            "message_id" => Column::MessageId,
            "record_ids" => Column::RecordIds,
            "payloads" => Column::Payloads,
            "created_at" => Column::CreatedAt,
            "state" => Column::State,
            "attempts" => Column::Attempts,
            "next_attempt_at" => Column::NextAttemptAt,
            _ => return None,
        })
    }
}

thread_local! {
    /// The queue's OID and the identity sequence of its `id`, looked up once per queue table
    /// (a new one after DROP and CREATE EXTENSION has a new OID).
    static SEQUENCE: Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

/// Inserts `rows` into `outbound_msg.queue` as new, due now; returns their ids in order.
pub fn insert(rows: Vec<NewRow>) -> Result<Vec<i64>> {
    let queue = queue_relid()?;
    let mut ids = Vec::with_capacity(rows.len());
    // SAFETY: the relation is opened and locked for the rest of the transaction; the executor
    // state, its slot and the row context live in the executor state's memory and are freed
    // with it below. An ERROR in between aborts the transaction, which frees them as well.
    unsafe {
        let relation = pg_sys::table_open(queue, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let desc = (*relation).rd_att;
        let layout = layout(desc)?;
        let sequence = identity_sequence(queue, &layout)?;

        let estate = pg_sys::CreateExecutorState();
        let mut query_memory = PgMemoryContexts::For((*estate).es_query_cxt);
        let (info, slot, row_memory) = query_memory.switch_to(|_| {
            let info = PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo)
                .into_pg();
            pg_sys::InitResultRelInfo(info, relation, 0, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(info, false);
            let slot = pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsVirtual);
            let row_memory = pg_sys::AllocSetContextCreateInternal(
                (*estate).es_query_cxt,
                c"outbound_msg queue row".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            );
            (info, slot, row_memory)
        });
        (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
        let now = pg_sys::GetCurrentTransactionStartTimestamp();
        pg_sys::AfterTriggerBeginQuery();

        for (message_id, record_ids, payloads) in rows {
            let id = pgrx::direct_function_call::<i64>(
                pg_sys::nextval_oid,
                &[Some(pg_sys::Datum::from(sequence))],
            )
            .unwrap_or_default();
            pg_sys::ExecClearTuple(slot);
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, layout.len());
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, layout.len());
            PgMemoryContexts::For(row_memory).switch_to(|_| {
                let mut record_ids = Some(record_ids);
                let mut payloads = Some(payloads);
                for (index, column) in layout.iter().enumerate() {
                    let value = match column {
                        None => None,
                        Some(Column::Id) => Some(pg_sys::Datum::from(id)),
                        Some(Column::MessageId) => Some(pg_sys::Datum::from(message_id)),
                        Some(Column::RecordIds) => record_ids.take().into_datum(),
                        Some(Column::Payloads) => payloads.take().into_datum(),
                        Some(Column::CreatedAt | Column::NextAttemptAt) => {
                            Some(pg_sys::Datum::from(now))
                        }
                        Some(Column::State) => "queued".into_datum(),
                        Some(Column::Attempts) => Some(pg_sys::Datum::from(0i32)),
                    };
                    values[index] = value.unwrap_or(pg_sys::Datum::from(0));
                    nulls[index] = value.is_none();
                }
            });
            pg_sys::ExecStoreVirtualTuple(slot);
            pg_sys::ExecSimpleRelationInsert(info, estate, slot);
            pg_sys::MemoryContextReset(row_memory);
            ids.push(id);
        }

        pg_sys::AfterTriggerEndQuery(estate);
        pg_sys::ExecCloseIndices(info);
        pg_sys::ExecResetTupleTable((*estate).es_tupleTable, false);
        pg_sys::FreeExecutorState(estate);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    Ok(ids)
}

fn queue_relid() -> Result<pg_sys::Oid> {
    // SAFETY: catalog cache lookups by name.
    let relid = unsafe {
        let schema = pg_sys::get_namespace_oid(c"outbound_msg".as_ptr(), false);
        pg_sys::get_relname_relid(c"queue".as_ptr(), schema)
    };
    if relid == pg_sys::InvalidOid {
        return Err(Error::new(
            Kind::Internal,
            "table outbound_msg.queue does not exist",
        ));
    }
    Ok(relid)
}

/// Which column each of the queue's attributes is (`None`: dropped, or one left NULL).
///
/// # Safety
/// `desc` must be a valid tuple descriptor.
unsafe fn layout(desc: pg_sys::TupleDesc) -> Result<Vec<Option<Column>>> {
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
    let layout: Vec<Option<Column>> = desc
        .iter()
        .map(|a| (!a.is_dropped()).then(|| Column::named(a.name())).flatten())
        .collect();
    if !layout.iter().any(|c| matches!(c, Some(Column::Id))) {
        return Err(Error::new(
            Kind::Internal,
            "table outbound_msg.queue has no column \"id\"",
        ));
    }
    Ok(layout)
}

/// The sequence that numbers the queue's rows, looked up once per queue table.
fn identity_sequence(queue: pg_sys::Oid, layout: &[Option<Column>]) -> Result<pg_sys::Oid> {
    let (known_queue, known_sequence) = SEQUENCE.get();
    if known_queue == queue {
        return Ok(known_sequence);
    }
    let attno = layout
        .iter()
        .position(|c| matches!(c, Some(Column::Id)))
        .map(|index| index as pg_sys::AttrNumber + 1)
        .unwrap_or(1);
    // SAFETY: a catalog lookup; `missing_ok` returns InvalidOid instead of raising an ERROR.
    let sequence = unsafe { pg_sys::getIdentitySequence(queue, attno, true) };
    if sequence == pg_sys::InvalidOid {
        return Err(Error::new(
            Kind::Internal,
            "outbound_msg.queue.id is not an identity column",
        ));
    }
    SEQUENCE.set((queue, sequence));
    Ok(sequence)
}
