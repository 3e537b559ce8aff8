//! Inserts queue rows with no INSERT statement to plan, start, run and end. The capture path
//! writes one queue row per statement that changed rows, and for a single-row statement the
//! executor's set-up and tear-down of an `INSERT ... RETURNING` cost more than the row itself.
//!
//! The queue as the extension makes it (no trigger, no CHECK constraint, one btree index of
//! the rows that are not new) gets each row from `heap_insert` alone: a new row is in no index,
//! and the worker learns where it is from the committing transaction (see [`super::new_rows`]).
//! If anyone changed more, rows go through `ExecSimpleRelationInsert`,
//! the way logical replication applies a replicated INSERT: NOT NULL and CHECK constraints,
//! every index (unique and partial ones included) and triggers apply as they would for an
//! INSERT. Access rights are not checked: only the extension writes the queue, as its owner.
//!
//! What the queue table is (its OID, which attribute holds which column, the sequence of its
//! ids) is looked up once and kept until PostgreSQL invalidates the table's relcache entry
//! (an `ALTER TABLE`, or `DROP EXTENSION` and `CREATE EXTENSION`, which makes a new table).
//!
//! Ids are numbered from blocks of [`ID_BLOCK`]: `outbound_msg.queue_id_blocks` counts in steps
//! of that size, and each value starts a block this backend numbers alone. Like a sequence's
//! cache, a block outlives the transaction that took it; unused ids are a gap, never reused.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use super::groups::{GroupTexts, Groups};
use super::new_rows::{Announcement, NOT_NEW};
use crate::deliver::wake;
use crate::error::{Error, Kind, Result};
use crate::relations::required_relation;
use crate::unguarded::{self, raising};

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

/// What the insert needs to know of `outbound_msg.queue`.
struct QueueTable {
    relid: pg_sys::Oid,
    /// Which column each attribute is (`None`: dropped, or one left NULL).
    layout: Vec<Option<Column>>,
    /// `outbound_msg.queue_id_blocks`, whose values start the blocks of ids.
    sequence: pg_sys::Oid,
    /// Every NOT NULL column is one this module fills (else only the executor's checks may
    /// insert).
    fills_every_required_column: bool,
    /// Whether the queue's only index is the extension's index of rows that are not new,
    /// which new rows need no entry in (see [`goes_plainly`]), found on the first insert after
    /// the table became known.
    only_index_not_of_new_rows: std::cell::OnceCell<bool>,
}

/// Ids in a block: the step of `outbound_msg.queue_id_blocks` (sql/schema.sql).
const ID_BLOCK: i64 = 100;

/// The ids this backend may still give out: `next` up to, not including, `end`, from a block
/// of `sequence`.
#[derive(Clone, Copy)]
struct IdBlock {
    sequence: pg_sys::Oid,
    next: i64,
    end: i64,
}

thread_local! {
    static TABLE: RefCell<Option<Rc<QueueTable>>> = const { RefCell::new(None) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static IDS: Cell<IdBlock> = const {
        Cell::new(IdBlock { sequence: pg_sys::InvalidOid, next: 0, end: 0 })
    };
}

/// The next id for a queue row, from this backend's block of `sequence` (a new block when
/// it is used up, or when the sequence is another one: the extension was created again).
fn next_id(sequence: pg_sys::Oid) -> i64 {
    let mut block = IDS.get();
    if block.sequence != sequence || block.next >= block.end {
        // SAFETY: nextval(regclass) of a sequence that exists (looked up with the table).
        let start = unsafe {
            pgrx::direct_function_call::<i64>(
                pg_sys::nextval_oid,
                &[Some(pg_sys::Datum::from(sequence))],
            )
        }
        .unwrap_or_default();
        block = IdBlock {
            sequence,
            next: start,
            end: start + ID_BLOCK,
        };
    }
    let id = block.next;
    block.next += 1;
    IDS.set(block);
    id
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    TABLE.with_borrow_mut(|table| {
        if relid == pg_sys::InvalidOid || table.as_ref().is_some_and(|t| t.relid == relid) {
            *table = None;
        }
    });
}

/// Inserts `groups` into `outbound_msg.queue`, one row each, as new and due now; returns their
/// ids in order.
pub fn insert(groups: &Groups) -> Result<Vec<i64>> {
    let relid = match TABLE.with_borrow(|table| table.as_ref().map(|t| t.relid)) {
        Some(relid) => relid,
        None => required_relation(c"queue")?,
    };
    // SAFETY: the relation is opened and locked for the rest of the transaction. An ERROR in
    // between aborts the transaction, which frees what the paths below allocated.
    unsafe {
        // Taking the lock processes pending invalidations: what is known of the table is
        // checked against the table as it is now, after the lock.
        let relation = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let desc = (*relation).rd_att;
        let table = match queue_table(relid, desc) {
            Ok(table) => table,
            Err(err) => {
                pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
                return Err(err);
            }
        };
        let (ids, tids) = if goes_plainly(relation, &table) {
            insert_plainly(relation, &table, groups)
        } else {
            insert_through_executor(relation, &table, groups)
        };
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        wake::rows_written(&tids);
        Ok(ids)
    }
}

/// Whether rows may go straight to the heap: the queue as this extension makes it, whose one
/// index leaves new rows out. Anything an INSERT would do beyond that (a trigger, a CHECK
/// constraint or generated column, another index, a NOT NULL column left empty here) sends
/// rows through the executor instead.
///
/// # Safety
/// `relation` must be the queue, opened and locked, and `table` what is known of it.
unsafe fn goes_plainly(relation: pg_sys::Relation, table: &QueueTable) -> bool {
    // SAFETY: reads the open relation's relcache entry.
    unsafe {
        if !table.fills_every_required_column
            || table.layout.len() > MAX_PLAIN_COLUMNS
            || !(*relation).trigdesc.is_null()
        {
            return false;
        }
        let constraints = (*(*relation).rd_att).constr;
        if !constraints.is_null()
            && ((*constraints).num_check > 0 || (*constraints).has_generated_stored)
        {
            return false;
        }
        // Kept with the table's description: a new or dropped index invalidates both.
        *table
            .only_index_not_of_new_rows
            .get_or_init(|| only_index_not_of_new_rows(relation))
    }
}

/// Whether the queue's only index is a btree one, not unique nor on expressions, ready for
/// inserts, whose predicate is the extension's [`NOT_NEW`].
///
/// # Safety
/// As for [`goes_plainly`].
unsafe fn only_index_not_of_new_rows(relation: pg_sys::Relation) -> bool {
    // SAFETY: as the caller guarantees; the index is opened only to be described, its
    // description allocated in the transaction's memory.
    unsafe {
        let indexes = pg_sys::RelationGetIndexList(relation);
        let only = (!indexes.is_null() && (*indexes).length == 1)
            .then(|| (*(*indexes).elements).oid_value);
        pg_sys::list_free(indexes);
        let Some(oid) = only else {
            return false;
        };
        let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let info = pg_sys::BuildIndexInfo(index);
        let of_rows_not_new = (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
            && !(*info).ii_Unique
            && (*info).ii_ReadyForInserts
            && (*info).ii_Expressions.is_null()
            && !(*info).ii_Predicate.is_null()
            && {
                let predicate = pg_sys::make_ands_explicit((*info).ii_Predicate);
                let context = pg_sys::deparse_context_for(c"queue".as_ptr(), (*relation).rd_id);
                let text = pg_sys::deparse_expression(predicate.cast(), context, false, false);
                std::ffi::CStr::from_ptr(text).to_bytes() == NOT_NEW.as_bytes()
            };
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        of_rows_not_new
    }
}

/// Most attributes of a queue that rows may go straight to the heap of: their values are
/// formed in arrays on the stack. (The queue has 11; a wider one goes through the executor.)
const MAX_PLAIN_COLUMNS: usize = 32;

/// Forms each row and hands it to `heap_insert`: what `ExecSimpleRelationInsert` would do for
/// this table (whose index leaves new rows out), without an executor state, result relation
/// and slot to set up and tear down for every statement. Returns the rows' ids and
/// [`Announcement`]s.
///
/// # Safety
/// As for [`goes_plainly`], which returned true.
unsafe fn insert_plainly(
    relation: pg_sys::Relation,
    table: &QueueTable,
    groups: &Groups,
) -> (Vec<i64>, Vec<u64>) {
    let ids: Vec<i64> = groups.iter().map(|_| next_id(table.sequence)).collect();
    let mut tids = vec![0u64; groups.len()];
    let columns = table.layout.len().min(MAX_PLAIN_COLUMNS);
    let mut values = [pg_sys::Datum::from(0); MAX_PLAIN_COLUMNS];
    let mut nulls = [true; MAX_PLAIN_COLUMNS];
    let row_memory = row_memory();
    // SAFETY: as the caller guarantees. Nothing in the closure needs dropping or can panic
    // (slices are sized above, key attributes are checked by `get`); each row's memory is
    // reset after it is stored.
    unsafe {
        let desc = (*relation).rd_att;
        unguarded::boundary(|| {
            let command = raising::GetCurrentCommandId(true);
            let now = pg_sys::Datum::from(unguarded::GetCurrentTransactionStartTimestamp());
            for ((row, &id), tid) in groups.iter().zip(&ids).zip(&mut tids) {
                // Also frees what a row left behind when an ERROR interrupted it.
                raising::MemoryContextReset(row_memory);
                let previous = pg_sys::MemoryContextSwitchTo(row_memory);
                fill_row(
                    table,
                    row,
                    id,
                    now,
                    &mut values[..columns],
                    &mut nulls[..columns],
                );
                let tuple = raising::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
                raising::heap_insert(relation, tuple, command, 0, std::ptr::null_mut());
                *tid = Announcement::new((*tuple).t_self, row.len()).raw();
                pg_sys::MemoryContextSwitchTo(previous);
            }
            raising::MemoryContextReset(row_memory);
        });
    }
    (ids, tids)
}

/// The memory each row is formed in, reset after it: made once per backend, so a single-row
/// statement does not create and delete a memory context.
fn row_memory() -> pg_sys::MemoryContext {
    thread_local! {
        static ROW_MEMORY: Cell<pg_sys::MemoryContext> = const { Cell::new(std::ptr::null_mut()) };
    }
    ROW_MEMORY.with(|memory| {
        if memory.get().is_null() {
            // SAFETY: a context under TopMemoryContext, kept for the backend's life.
            memory.set(unsafe {
                pg_sys::AllocSetContextCreateExtended(
                    pg_sys::TopMemoryContext,
                    c"outbound_msg queue row".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            });
        }
        memory.get()
    })
}

/// Hands each row to `ExecSimpleRelationInsert`, which applies the table's constraints,
/// indexes and triggers as an INSERT would. Returns the rows' ids and [`Announcement`]s.
///
/// # Safety
/// `relation` must be the queue, opened and locked.
unsafe fn insert_through_executor(
    relation: pg_sys::Relation,
    table: &QueueTable,
    groups: &Groups,
) -> (Vec<i64>, Vec<u64>) {
    let mut ids = Vec::with_capacity(groups.len());
    let mut tids = Vec::with_capacity(groups.len());
    // SAFETY: the executor state, its slot and the row context live in the executor state's
    // memory and are freed with it below.
    unsafe {
        let desc = (*relation).rd_att;
        let estate = pg_sys::CreateExecutorState();
        let mut query_memory = PgMemoryContexts::For((*estate).es_query_cxt);
        let (info, slot) = query_memory.switch_to(|_| {
            let info = PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo)
                .into_pg();
            pg_sys::InitResultRelInfo(info, relation, 0, std::ptr::null_mut(), 0);
            pg_sys::ExecOpenIndices(info, false);
            let slot = pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsVirtual);
            (info, slot)
        });
        // Each row's values are formed in the executor state's per-tuple memory, reset after
        // the row is stored.
        let row_memory = (*pg_sys::MakePerTupleExprContext(estate)).ecxt_per_tuple_memory;
        (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
        let now = pg_sys::Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
        let has_triggers = !(*relation).trigdesc.is_null();
        if has_triggers {
            pg_sys::AfterTriggerBeginQuery();
        }

        for row in groups.iter() {
            let id = next_id(table.sequence);
            pg_sys::ExecClearTuple(slot);
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, table.layout.len());
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, table.layout.len());
            let previous = pg_sys::MemoryContextSwitchTo(row_memory);
            unguarded::boundary(|| fill_row(table, row, id, now, values, nulls));
            pg_sys::MemoryContextSwitchTo(previous);
            pg_sys::ExecStoreVirtualTuple(slot);
            pg_sys::ExecSimpleRelationInsert(info, estate, slot);
            pg_sys::MemoryContextReset(row_memory);
            ids.push(id);
            tids.push(Announcement::new((*slot).tts_tid, row.len()).raw());
        }

        if has_triggers {
            pg_sys::AfterTriggerEndQuery(estate);
        }
        pg_sys::ExecCloseIndices(info);
        pg_sys::ExecResetTupleTable((*estate).es_tupleTable, false);
        pg_sys::FreeExecutorState(estate);
    }
    (ids, tids)
}

/// Sets `values` and `nulls` to the queue row `id` of `row`, new and due `now`, in the current
/// memory context.
///
/// # Safety
/// Only inside [`unguarded::boundary`], in a transaction; `values` and `nulls` have one entry
/// per attribute.
unsafe fn fill_row(
    table: &QueueTable,
    row: GroupTexts,
    id: i64,
    now: pg_sys::Datum,
    values: &mut [pg_sys::Datum],
    nulls: &mut [bool],
) {
    for ((column, value), null) in table.layout.iter().zip(values).zip(nulls) {
        // SAFETY: as the caller guarantees.
        let filled = unsafe {
            match column {
                None => None,
                Some(Column::Id) => Some(pg_sys::Datum::from(id)),
                Some(Column::MessageId) => Some(pg_sys::Datum::from(row.message_id())),
                Some(Column::RecordIds) => Some(text_array(row.record_ids())),
                Some(Column::Payloads) => Some(text_array(row.payloads())),
                Some(Column::CreatedAt | Column::NextAttemptAt) => Some(now),
                Some(Column::State) => Some(text("new")),
                Some(Column::Attempts) => Some(pg_sys::Datum::from(0i32)),
            }
        };
        *value = filled.unwrap_or(pg_sys::Datum::from(0));
        *null = filled.is_none();
    }
}

/// A `text` datum of `value`, in the current memory context.
///
/// # Safety
/// Only inside [`unguarded::boundary`], in a transaction; the datum lives as long as the
/// current memory context.
unsafe fn text(value: &str) -> pg_sys::Datum {
    // SAFETY: copies `value.len()` bytes of `value` into a new varlena.
    unsafe {
        pg_sys::Datum::from(raising::cstring_to_text_with_len(
            value.as_ptr().cast(),
            value.len() as i32,
        ))
    }
}

/// A one-dimensional `text[]` datum of `items`, in the current memory context.
///
/// Laid out here as `construct_array` would (utils/array.h): the header, one dimension and its
/// lower bound, then each element as a text with a 4-byte header, at 4-byte alignment (text's
/// `typalign`), in one allocation instead of one per element and a copy.
///
/// # Safety
/// As for [`text`].
unsafe fn text_array<'a>(items: impl Iterator<Item = &'a str> + Clone) -> pg_sys::Datum {
    const HEADER: usize = size_of::<pg_sys::ArrayType>() + 2 * size_of::<i32>();
    let overhead = HEADER.next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize);
    let element = |item: &str| (pg_sys::VARHDRSZ + item.len()).next_multiple_of(4);
    let (count, data_size) = items.clone().fold((0usize, 0), |(count, size), item| {
        (count + 1, size + element(item))
    });
    if count == 0 {
        // SAFETY: as the caller guarantees. (An empty array has no dimension at all.)
        return unsafe { pg_sys::Datum::from(raising::construct_empty_array(pg_sys::TEXTOID)) };
    }
    let size = overhead + data_size;
    // SAFETY: `size` bytes; every write below stays within them, and every byte is written
    // (padding as zeros, as construct_array leaves it), so none is zeroed twice.
    unsafe {
        let array = raising::palloc(size) as *mut pg_sys::ArrayType;
        std::ptr::write_bytes(array as *mut u8, 0, overhead);
        pgrx::set_varsize_4b(array.cast(), size as i32);
        (*array).ndim = 1;
        (*array).dataoffset = 0;
        (*array).elemtype = pg_sys::TEXTOID;
        let dimensions = array.add(1) as *mut i32;
        *dimensions = count as i32;
        *dimensions.add(1) = 1;
        let mut data = (array as *mut u8).add(overhead);
        for item in items {
            let length = pg_sys::VARHDRSZ + item.len();
            pgrx::set_varsize_4b(data.cast(), length as i32);
            std::ptr::copy_nonoverlapping(item.as_ptr(), data.add(pg_sys::VARHDRSZ), item.len());
            std::ptr::write_bytes(data.add(length), 0, element(item) - length);
            data = data.add(element(item));
        }
        pg_sys::Datum::from(array)
    }
}

/// What is known of the queue table `relid`, whose rows `desc` describes: kept from an
/// earlier call unless invalidated since.
///
/// # Safety
/// `desc` must be the descriptor of `relid`, opened and locked.
unsafe fn queue_table(relid: pg_sys::Oid, desc: pg_sys::TupleDesc) -> Result<Rc<QueueTable>> {
    let kept = TABLE.with_borrow(|table| table.as_ref().filter(|t| t.relid == relid).cloned());
    if let Some(table) = kept {
        return Ok(table);
    }
    if !CALLBACK_REGISTERED.replace(true) {
        // SAFETY: registers a callback that lives as long as the library; it only forgets.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
    }
    // SAFETY: as the caller guarantees.
    let (layout, fills_every_required_column) = unsafe { layout(desc) }?;
    let table = Rc::new(QueueTable {
        relid,
        sequence: required_relation(c"queue_id_blocks")?,
        fills_every_required_column,
        layout,
        only_index_not_of_new_rows: Default::default(),
    });
    TABLE.set(Some(Rc::clone(&table)));
    Ok(table)
}

/// Which column each of the queue's attributes is (`None`: dropped, or one left NULL), and
/// whether every NOT NULL attribute is one of those filled.
///
/// # Safety
/// `desc` must be a valid tuple descriptor.
unsafe fn layout(desc: pg_sys::TupleDesc) -> Result<(Vec<Option<Column>>, bool)> {
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(desc) };
    let mut fills_every_required_column = true;
    let mut layout = Vec::with_capacity(desc.len());
    for attribute in desc.iter() {
        let column = (!attribute.is_dropped())
            .then(|| Column::named(attribute.name()))
            .flatten();
        fills_every_required_column &= column.is_some() || !attribute.attnotnull;
        layout.push(column);
    }
    if !layout.iter().any(|c| matches!(c, Some(Column::Id))) {
        return Err(Error::new(
            Kind::Internal,
            "table outbound_msg.queue has no column \"id\"",
        ));
    }
    Ok((layout, fills_every_required_column))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn text_arrays_are_laid_out_as_postgres_builds_them() {
        let cases: Vec<Vec<String>> = vec![
            vec![],
            vec![String::new()],
            vec![
                "a".into(),
                "bc".into(),
                "def".into(),
                "ghij".into(),
                "klmno".into(),
            ],
            vec![
                "<sf:Id>42</sf:Id>".into(),
                "Zoë — ünïcode".into(),
                "x".repeat(3000),
            ],
        ];
        for items in cases {
            // SAFETY: inside a transaction; the datum lives in the current memory context.
            let ours =
                unsafe { unguarded::boundary(|| text_array(items.iter().map(String::as_str))) };
            let same = Spi::get_one_with_args::<bool>(
                "SELECT $1::text[] = $2::text[] AND array_length($1, 1) IS NOT DISTINCT FROM
                        array_length($2, 1) AND array_lower($1, 1) IS NOT DISTINCT FROM
                        array_lower($2, 1)",
                &[
                    // SAFETY: `ours` is a valid text[] datum.
                    unsafe { pgrx::datum::DatumWithOid::new(ours, pg_sys::TEXTARRAYOID) },
                    items.clone().into(),
                ],
            );
            assert_eq!(same, Ok(Some(true)), "{items:?}");
            // Byte for byte, padding included (a palloc'd array must zero it itself).
            let theirs = items.clone().into_datum().unwrap();
            // SAFETY: both are text[] datums with 4-byte headers, in the current memory context.
            let bytes = |datum: pg_sys::Datum| unsafe {
                let varlena = datum.cast_mut_ptr::<pg_sys::varlena>();
                std::slice::from_raw_parts(
                    varlena as *const u8,
                    pgrx::varlena::varsize_any(varlena),
                )
            };
            assert_eq!(bytes(ours), bytes(theirs), "{items:?}");
        }
    }

    fn define_message() {
        Spi::run(
            "TRUNCATE outbound_msg.queue;
             CREATE TABLE t (id int PRIMARY KEY, v text);
             SELECT outbound_msg.create_message('t', 'T', 'T', 'http://127.0.0.1:9/',
                                                ARRAY['v'], 'postgres');",
        )
        .unwrap();
    }

    #[pg_test]
    fn the_queue_index_predicate_is_not_new() {
        // What PostgreSQL made of sql/schema.sql's `WHERE state <> 'new'`: the text the insert
        // recognises the index of rows that are not new by.
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT pg_get_expr(indpred, indrelid) FROM pg_index
                  WHERE indexrelid = 'outbound_msg.queue_due'::regclass"
            ),
            Ok(Some(NOT_NEW.to_string()))
        );
    }

    #[pg_test]
    fn another_index_on_the_queue_gets_every_row() {
        define_message();
        Spi::run("CREATE INDEX queue_by_id ON outbound_msg.queue (id)").unwrap();
        let size = || {
            Spi::get_one::<i64>("SELECT pg_relation_size('outbound_msg.queue_by_id')")
                .unwrap()
                .unwrap()
        };
        // An empty btree index is its metapage alone; its first entry adds a leaf page.
        assert_eq!(size(), 8192);
        Spi::run("INSERT INTO t VALUES (1, 'a')").unwrap();
        assert_eq!(size(), 16384);
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM outbound_msg.queue"),
            Ok(Some(1))
        );
    }

    #[pg_test(error = "new row for relation \"queue\" violates check constraint \"one_each\"")]
    fn a_check_constraint_on_the_queue_is_enforced() {
        define_message();
        Spi::run(
            "ALTER TABLE outbound_msg.queue
                 ADD CONSTRAINT one_each CHECK (cardinality(record_ids) = 1);
             INSERT INTO t VALUES (1, 'a');",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM outbound_msg.queue"),
            Ok(Some(1))
        );
        // Two rows of one statement travel in one group of two.
        Spi::run("INSERT INTO t VALUES (2, 'b'), (3, 'c')").unwrap();
    }
}
