//! Capture: the row trigger that turns each change into one notification per active message of
//! the table, and `send`, which queues one explicitly. Both render the row's key and selected
//! columns into a ready-to-send payload, at the time of the change, in the calling transaction
//! (a rollback sends nothing).
//!
//! The row trigger does no query of its own in the common case: definitions, the columns each
//! send-as role may read and whether row-level security applies are looked up once and kept
//! until an invalidation (a changed definition, GRANT, REVOKE, policy or role), and rendered
//! notifications go to [`super::statement`], which writes them in groups.

use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::rc::Rc;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};
use pgrx::PgTupleDesc;

use super::{encode, statement};
use crate::define::catalog::{self, Capture, Evaluate};
use crate::define::criteria;
use crate::error::{required, required_message, Error, Kind};
use crate::sqltypes::RegClass;
use crate::wire::ids::{salesforce_id, NOTIFICATION_PREFIX};
use crate::wire::soap;
use crate::{queue, roles};

/// Trigger function installed by `create_message` on every table that has messages: one call
/// per inserted or updated row.
#[pg_trigger]
fn capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    if let Err(err) = capture_row(trigger) {
        err.report();
    }
    // The return value of an AFTER trigger is ignored.
    Ok(None)
}

/// A message of a table with what this statement may send of it.
struct Prepared {
    message: Capture,
    /// How to render rows of the trigger's table; `None` when the send-as role may not read
    /// the key, so nothing can be sent.
    plan: Option<RowPlan>,
    /// When its row-level security policies filter the rows: the query that looks a changed
    /// row up by key as the send-as role (built once, not per row).
    visibility_query: Option<String>,
}

/// Where the key and each readable field sit in a table's rows, and how they are encoded.
struct RowPlan {
    key: Column,
    fields: Vec<Column>,
}

struct Column {
    name: String,
    attno: NonZeroUsize,
    encoder: encode::Encoder,
    tags: soap::Tags,
}

impl RowPlan {
    /// The plan for rows described by `desc` (a partition's columns may sit elsewhere than
    /// its parent's), or `None` when a column no longer exists.
    fn new(desc: &PgTupleDesc, key_column: &str, fields: &[String]) -> Option<RowPlan> {
        let column = |name: &str| {
            let (index, attribute) = desc
                .iter()
                .enumerate()
                .find(|(_, a)| !a.is_dropped() && a.name() == name)?;
            Some(Column {
                name: name.to_string(),
                attno: NonZeroUsize::new(index + 1)?,
                encoder: encode::Encoder::for_type(attribute.type_oid().value()),
                tags: soap::Tags::new(name),
            })
        };
        Some(RowPlan {
            key: column(key_column)?,
            fields: fields.iter().map(|f| column(f)).collect::<Option<_>>()?,
        })
    }

    /// Appends the record Id and then the rendered fields of `row` to `out`; returns the
    /// record Id's length.
    fn render(&self, row: &Row, out: &mut String) -> crate::error::Result<usize> {
        let start = out.len();
        let written = row
            .datum(&self.key)
            // SAFETY: a non-NULL datum of the key column's type.
            .is_some_and(|datum| unsafe { self.key.encoder.write(datum, out, false) });
        if !written {
            out.truncate(start);
            return Err(Error::new(
                Kind::Internal,
                format!("primary key column \"{}\" has no value", self.key.name),
            ));
        }
        let key_end = out.len();
        let mut fields = soap::Fields::new(out, start..key_end);
        for column in &self.fields {
            if let Some(datum) = row.datum(column) {
                // SAFETY: a non-NULL datum of the column's type.
                let added = fields.add(&column.tags, |out| unsafe {
                    column.encoder.write(datum, out, true)
                });
                if added == soap::Added::TooLarge {
                    warning!(
                        "outbound_msg: column \"{}\" is left out of a notification: with it, the notification would be over {} MiB",
                        column.name,
                        soap::NOTIFICATION_BYTES >> 20
                    );
                }
            }
        }
        Ok(key_end - start)
    }
}

/// A table's OID and its prepared messages.
type CachedTable = (u32, Rc<Vec<Prepared>>);

thread_local! {
    /// Definitions by table, valid while the generation they were read at is current. A list:
    /// a backend captures changes to a few tables, and hashing the OID (SipHash) cost more per
    /// row than comparing it with each.
    static CACHE: RefCell<(u64, Vec<CachedTable>)> = const { RefCell::new((0, Vec::new())) };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// `outbound_msg.message`, whose invalidation says another backend changed definitions.
    static DEFINITIONS_TABLE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // Autovacuum's ANALYZE of a busy table invalidates it every few seconds: only relations
    // the kept definitions depend on make them be looked up again.
    if relid == pg_sys::InvalidOid || depends_on(relid) {
        catalog::definitions_changed();
    }
}

/// Whether what is kept depends on relation `relid`: the definitions table, a table whose
/// rows are captured, or a table a message is defined on (its grants and policies).
fn depends_on(relid: pg_sys::Oid) -> bool {
    if relid == DEFINITIONS_TABLE.get() {
        return true;
    }
    CACHE.with(|cache| {
        let Ok(cache) = cache.try_borrow() else {
            return true;
        };
        cache.1.iter().any(|(table, prepared)| {
            *table == relid.to_u32() || prepared.iter().any(|p| p.message.object == relid)
        })
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn on_role_invalidation(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    catalog::definitions_changed();
}

fn register_invalidation_callbacks() {
    if CALLBACKS_REGISTERED.replace(true) {
        return;
    }
    // SAFETY: registers callbacks that live as long as the library; they only bump a counter.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        );
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(on_role_invalidation),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// The active messages of table `relid` (or its partition ancestors), as of the latest
/// invalidation; `desc` describes `relid`'s rows.
fn prepared(relid: pg_sys::Oid, desc: &PgTupleDesc) -> crate::error::Result<Rc<Vec<Prepared>>> {
    register_invalidation_callbacks();
    let generation = catalog::definitions_generation();
    let cached = CACHE.with_borrow_mut(|(cached_generation, tables)| {
        if *cached_generation != generation {
            *cached_generation = generation;
            tables.clear();
        }
        let relid = relid.to_u32();
        tables
            .iter()
            .find(|(table, _)| *table == relid)
            .map(|(_, prepared)| Rc::clone(prepared))
    });
    if let Some(cached) = cached {
        return Ok(cached);
    }
    // The trigger runs as whoever changed the row, who may not read the definitions: they
    // are read as the extension's owner, who also writes the queue.
    let owner = roles::extension_owner();
    let messages = roles::run_sql_as_owner(owner, || {
        Spi::connect(|client| catalog::active_messages(client, relid))
    })?;
    DEFINITIONS_TABLE.set(catalog::definitions_table());
    statement::set_owner(owner);
    let prepared: Vec<Prepared> = messages
        .into_iter()
        .map(|message| Prepared {
            plan: readable_fields(
                message.send_as,
                message.object,
                &message.key_column,
                &message.fields,
            )
            .and_then(|fields| RowPlan::new(desc, &message.key_column, &fields)),
            visibility_query: roles::row_security_applies(message.send_as, message.object)
                .then(|| row_by_key(&message.table, &message.key_column, &message.key_type, &[])),
            message,
        })
        .collect();
    let prepared = Rc::new(prepared);
    CACHE.with_borrow_mut(|(_, tables)| {
        tables.retain(|(table, _)| *table != relid.to_u32());
        tables.push((relid.to_u32(), Rc::clone(&prepared)));
    });
    Ok(prepared)
}

fn capture_row(trigger: &PgTrigger) -> crate::error::Result<()> {
    let misuse = |_| {
        Error::new(
            Kind::Internal,
            "outbound_msg.capture() fired in an unexpected way",
        )
    };
    if !matches!(trigger.level(), PgTriggerLevel::Row)
        || !matches!(trigger.when().map_err(misuse)?, PgTriggerWhen::After)
    {
        return Err(Error::new(
            Kind::FeatureNotSupported,
            "outbound_msg.capture() must be an AFTER ... FOR EACH ROW trigger",
        ));
    }
    let is_update = match trigger.op().map_err(misuse)? {
        PgTriggerOperation::Insert => false,
        PgTriggerOperation::Update => true,
        _ => return Ok(()),
    };
    let data = trigger.trigger_data();
    // SAFETY: a trigger's relation is open while it runs. (Read here, not through pgrx's
    // PgRelation, built and dropped per row.)
    let relid = unsafe { (*data.tg_relation).rd_id };
    // SAFETY: for a row trigger on INSERT the new row is tg_trigtuple; on UPDATE the old row is
    // tg_trigtuple and the new one tg_newtuple. They and the relation's descriptor live until
    // the trigger returns.
    let (new_row, old_row) = unsafe {
        let desc = (*data.tg_relation).rd_att;
        if is_update {
            (
                Row::new(data.tg_newtuple, desc),
                Some(Row::new(data.tg_trigtuple, desc)),
            )
        } else {
            (Row::new(data.tg_trigtuple, desc), None)
        }
    };
    for prepared in prepared(relid, &new_row.desc)?.iter() {
        let Some(plan) = &prepared.plan else {
            continue;
        };
        let message = &prepared.message;
        if !wanted(message, &new_row, old_row.as_ref())? {
            continue;
        }
        if let Some(query) = &prepared.visibility_query {
            if !Spi::connect_mut(|client| visible_to_send_as(client, message, query, &new_row))? {
                continue;
            }
        }
        statement::add(message.message_id, |text| plan.render(&new_row, text))?;
    }
    Ok(())
}

/// The fields the send-as role may read now (a grant may have been revoked since the message
/// was defined); `None` when it may not read the key, so nothing can be sent.
fn readable_fields(
    send_as: pg_sys::Oid,
    object: pg_sys::Oid,
    key_column: &str,
    fields: &[String],
) -> Option<Vec<String>> {
    if !roles::can_select_column(send_as, object, key_column) {
        return None;
    }
    Some(
        fields
            .iter()
            .filter(|f| roles::can_select_column(send_as, object, f))
            .cloned()
            .collect(),
    )
}

/// Whether the send-as role's row-level security policies let it see the changed row: the row
/// is looked up by its key through the message's table (`query`, from [`row_by_key`]), as that
/// role, with its policies applied. (By key, not by ctid: system columns need table-wide SELECT, which a role granted
/// only some columns lacks.)
fn visible_to_send_as(
    client: &mut SpiClient,
    message: &Capture,
    query: &str,
    row: &Row,
) -> crate::error::Result<bool> {
    let key = row.sql_text(&message.key_column)?.unwrap_or_default();
    // A read-write execution takes a new snapshot, which sees the row the statement wrote.
    let visible = roles::read_rows_as(message.send_as, || {
        client.update(query, Some(1), &[key.as_str().into()])
    })?;
    Ok(!visible.is_empty())
}

/// `SELECT` of the key and `fields` of the row whose key is `$1` (text, cast to the key's
/// type so the primary key's index is used).
fn row_by_key(table: &str, key_column: &str, key_type: &str, fields: &[String]) -> String {
    let mut columns = vec![quote_identifier(key_column)];
    columns.extend(fields.iter().map(quote_identifier));
    format!(
        "SELECT {} FROM {table} WHERE {} = CAST($1 AS {key_type})",
        columns.join(", "),
        quote_identifier(key_column)
    )
}

/// Whether a change queues a notification of `message` (SPEC §1, "when to send").
fn wanted(message: &Capture, new_row: &Row, old_row: Option<&Row>) -> crate::error::Result<bool> {
    if matches!((message.evaluate, old_row), (Evaluate::Created, Some(_))) {
        return Ok(false);
    }
    let Some(text) = &message.criteria else {
        return Ok(true);
    };
    // As the send-as role, never as the extension's owner: criteria may call functions of
    // whoever defined the message, and run with no more privileges than what it sends. One
    // switch of role and settings for both rows of an update.
    roles::run_sql_as(message.send_as, || {
        Spi::connect(|_| {
            let holds = |row: &Row| {
                criteria::holds(
                    row.type_oid(),
                    &message.table_alias,
                    text,
                    row.composite(),
                    &message.unique_name,
                )
            };
            Ok(match (message.evaluate, old_row) {
                (Evaluate::EditedToMeetCriteria, Some(old_row)) => {
                    holds(new_row)? && !holds(old_row)?
                }
                _ => holds(new_row)?,
            })
        })
    })
}

/// [`send`] with the key in its own type (`send('expense', 'Expense_to_ERP', 3)`): the key's
/// text form is read as the key column's type.
#[pg_extern(name = "send")]
fn send_key(
    object: Option<RegClass>,
    unique_name: Option<&str>,
    key: Option<pgrx::AnyElement>,
) -> std::result::Result<String, ErrorReport> {
    let key = required(key, "key")?;
    let mut output = pg_sys::Oid::INVALID;
    let mut varlena = false;
    // SAFETY: the output function of the argument's own type, called on its datum; the C
    // string it returns is palloc'd and copied before the memory context goes.
    let text = unsafe {
        pg_sys::getTypeOutputInfo(key.oid(), &mut output, &mut varlena);
        let text = pg_sys::OidOutputFunctionCall(output, key.datum());
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    };
    send(object, unique_name, Some(&text))
}

/// Queues a notification of a message for the row whose primary key is `key`, as a procedure,
/// flow or approval step would call the action. The row is read with the send-as role's
/// privileges; the message's evaluation criteria do not apply. Returns the notification's Id.
#[pg_extern]
fn send(
    object: Option<RegClass>,
    unique_name: Option<&str>,
    key: Option<&str>,
) -> std::result::Result<String, ErrorReport> {
    let (object, unique_name) = required_message(object, unique_name)?;
    let key = required(key, "key")?;
    roles::api_call(|client, caller| {
        let message = catalog::sendable(client, object, unique_name, caller)?;
        let fields = readable_fields(
            message.send_as,
            message.object,
            &message.key_column,
            &message.fields,
        )
        .ok_or_else(|| {
            Error::new(
                Kind::InsufficientPrivilege,
                format!(
                    "the send-as role cannot read the key column \"{}\"",
                    message.key_column
                ),
            )
        })?;
        let key_type = key_type(client, object, &message.key_column)?;
        let query = row_by_key(&message.table, &message.key_column, &key_type, &fields);
        let rows = roles::read_rows_as(message.send_as, || {
            client.select(&query, Some(1), &[key.into()])
        })?;
        if rows.is_empty() {
            return Err(Error::new(
                Kind::InvalidParameter,
                format!(
                    "table {} has no row with key \"{key}\" visible to the send-as role",
                    message.table
                ),
            ));
        }
        // SAFETY: the SPI result of the query above: one row and its descriptor, valid until
        // the SPI connection ends.
        let row = unsafe {
            let table = pg_sys::SPI_tuptable;
            Row::new(*(*table).vals, (*table).tupdesc)
        };
        // Rendered from the row before the INSERT replaces the SPI result.
        let plan = RowPlan::new(&row.desc, &message.key_column, &fields)
            .ok_or_else(|| Error::new(Kind::Internal, "the row read for send() lacks a column"))?;
        let mut text = String::new();
        let key_length = plan.render(&row, &mut text)?;
        let mut groups = queue::Groups::new(1);
        let (record_id, payload) = text.split_at(key_length);
        groups.push(message.message_id, record_id, payload);
        let group = queue::write_groups(&groups)?
            .first()
            .copied()
            .unwrap_or_default();
        Ok(salesforce_id(
            NOTIFICATION_PREFIX,
            queue::notification_number(group, 0),
        ))
    })
}

/// The SQL type of the key column, to read a key given as text.
fn key_type(
    client: &SpiClient,
    object: RegClass,
    key_column: &str,
) -> crate::error::Result<String> {
    Ok(client
        .select(
            "SELECT format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attname = $2",
            Some(1),
            &[object.into(), key_column.into()],
        )?
        .first()
        .get_one::<String>()?
        .unwrap_or_else(|| "text".to_string()))
}

/// A row and its descriptor: a trigger's row, or a row read through SPI. Its values are
/// extracted once, as PostgreSQL's own executor does.
struct Row<'a> {
    tuple: *mut pg_sys::HeapTupleData,
    desc: PgTupleDesc<'a>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

thread_local! {
    /// The arrays of the last row dropped, for the next one: a bulk statement deforms every row
    /// into arrays of the same size, and allocating them anew is a visible part of capture's cost.
    static SPARE_ARRAYS: Cell<Option<(Vec<pg_sys::Datum>, Vec<bool>)>> = const { Cell::new(None) };
}

impl Drop for Row<'_> {
    fn drop(&mut self) {
        let arrays = (
            std::mem::take(&mut self.values),
            std::mem::take(&mut self.nulls),
        );
        SPARE_ARRAYS.set(Some(arrays));
    }
}

impl Row<'_> {
    /// # Safety
    /// `tuple` and `desc` must be valid and match until the row is dropped.
    unsafe fn new(tuple: *mut pg_sys::HeapTupleData, desc: pg_sys::TupleDesc) -> Self {
        // SAFETY: as the caller guarantees; the arrays have one slot per attribute.
        unsafe {
            let natts = (*desc).natts as usize;
            let (mut values, mut nulls) = SPARE_ARRAYS.take().unwrap_or_default();
            values.clear();
            values.resize(natts, pg_sys::Datum::from(0));
            nulls.clear();
            nulls.resize(natts, true);
            crate::unguarded::heap_deform_tuple(
                tuple,
                desc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            );
            Row {
                tuple,
                desc: PgTupleDesc::from_pg_unchecked(desc),
                values,
                nulls,
            }
        }
    }

    /// The value of `column`, `None` when NULL.
    fn datum(&self, column: &Column) -> Option<pg_sys::Datum> {
        let index = column.attno.get() - 1;
        (!self.nulls[index]).then(|| self.values[index])
    }

    /// The text output of column `name` (PostgreSQL's own, which its input reads back), `None`
    /// when NULL.
    fn sql_text(&self, name: &str) -> crate::error::Result<Option<String>> {
        let (index, attribute) = self
            .desc
            .iter()
            .enumerate()
            .find(|(_, a)| !a.is_dropped() && a.name() == name)
            .ok_or_else(|| {
                Error::new(
                    Kind::UndefinedColumn,
                    format!("column \"{name}\" does not exist"),
                )
            })?;
        let typoid = attribute.type_oid().value();
        // SAFETY: a non-NULL value of the attribute's own type.
        Ok(
            (!self.nulls[index])
                .then(|| unsafe { encode::output_text(self.values[index], typoid) }),
        )
    }

    /// The row's composite type (the table's row type).
    fn type_oid(&self) -> pg_sys::Oid {
        self.desc.oid()
    }

    /// The row as a composite datum, for evaluating criteria.
    fn composite(&self) -> pg_sys::Datum {
        // SAFETY: `tuple` is described by `desc`; the copy lives in the current memory context.
        unsafe { pg_sys::heap_copy_tuple_as_datum(self.tuple, self.desc.as_ptr()) }
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn payloads() -> Vec<String> {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT p FROM outbound_msg.queue, unnest(payloads) WITH ORDINALITY AS u(p, n) ORDER BY id, n",
                    None,
                    &[],
                )
                .unwrap()
                .filter_map(|row| row.get::<String>(1).unwrap())
                .collect()
        })
    }

    #[pg_test]
    fn insert_queues_the_row_as_it_was() {
        Spi::run(
            "CREATE TABLE expense (id int PRIMARY KEY, note text, amount numeric, paid boolean,
                                   at timestamptz, skipped text);
             SELECT outbound_msg.create_message('expense', 'E', 'E', 'http://127.0.0.1:9/',
                                                ARRAY['note', 'amount', 'paid', 'at'], 'postgres');
             SET LOCAL timezone = 'Europe/Paris';
             INSERT INTO expense VALUES (1, 'a<b', 12.50, true, '2024-02-29 13:34:56.789+01', 'x');
             UPDATE expense SET note = NULL;",
        )
        .unwrap();
        assert_eq!(
            payloads(),
            vec![
                concat!(
                    "     <sf:Id>1</sf:Id>\n",
                    "     <sf:amount>12.50</sf:amount>\n",
                    "     <sf:at>2024-02-29T12:34:56.789Z</sf:at>\n",
                    "     <sf:note>a&lt;b</sf:note>\n",
                    "     <sf:paid>true</sf:paid>\n"
                ),
                concat!(
                    "     <sf:Id>1</sf:Id>\n",
                    "     <sf:amount>12.50</sf:amount>\n",
                    "     <sf:at>2024-02-29T12:34:56.789Z</sf:at>\n",
                    "     <sf:paid>true</sf:paid>\n"
                ),
            ]
        );
    }

    #[pg_test]
    fn created_ignores_updates_and_each_message_gets_its_own_row() {
        Spi::run(
            "CREATE TABLE item (id bigint PRIMARY KEY, v float8, d date, b bytea);
             SELECT outbound_msg.create_message('item', 'A', 'A', 'http://127.0.0.1:9/',
                                                ARRAY['v', 'd', 'b'], 'postgres', evaluate => 'created');
             SELECT outbound_msg.create_message('item', 'B', 'B', 'http://127.0.0.1:9/',
                                                ARRAY[]::text[], 'postgres');
             INSERT INTO item VALUES (5, 'Infinity', 'infinity', '\\x00ff');
             UPDATE item SET v = 1.5;",
        )
        .unwrap();
        let count = |sql: &str| Spi::get_one::<i64>(sql).unwrap().unwrap();
        assert_eq!(
            count("SELECT sum(cardinality(record_ids))::bigint FROM outbound_msg.queue"),
            3
        );
        assert_eq!(
            payloads()[0],
            "     <sf:Id>5</sf:Id>\n     <sf:b>AP8=</sf:b>\n     <sf:v>INF</sf:v>\n"
        );
    }

    #[pg_test]
    fn a_message_on_a_partitioned_table_captures_rows_of_its_partitions() {
        // The partition's columns are in another order: values are found by name.
        Spi::run(
            "CREATE TABLE reading (day date, id int, v int, PRIMARY KEY (id)) PARTITION BY LIST (id);
             CREATE TABLE reading_small (v int, id int NOT NULL, day date);
             ALTER TABLE reading ATTACH PARTITION reading_small FOR VALUES IN (1, 2, 3);
             SELECT outbound_msg.create_message('reading', 'R', 'R', 'http://127.0.0.1:9/',
                                                ARRAY['v'], 'postgres');
             INSERT INTO reading VALUES ('2024-05-01', 2, 40);",
        )
        .unwrap();
        assert_eq!(
            payloads(),
            vec!["     <sf:Id>2</sf:Id>\n     <sf:v>40</sf:v>\n"]
        );
    }

    fn count() -> i64 {
        Spi::get_one::<i64>(
            "SELECT coalesce(sum(cardinality(record_ids)), 0)::bigint FROM outbound_msg.queue",
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn criteria_filter_inserts_and_updates() {
        Spi::run(
            "CREATE TABLE claim (id int PRIMARY KEY, amount int, status text);
             SELECT outbound_msg.create_message('claim', 'Big', 'Big', 'http://127.0.0.1:9/',
                    ARRAY['amount'], 'postgres', criteria => 'amount > 100 AND claim.status <> ''void''');
             INSERT INTO claim VALUES (1, 50, 'new');",
        )
        .unwrap();
        assert_eq!(count(), 0, "an insert not meeting the criteria");
        Spi::run("UPDATE claim SET amount = 500").unwrap();
        assert_eq!(count(), 1, "an update meeting the criteria");
        Spi::run("UPDATE claim SET amount = 600").unwrap();
        assert_eq!(
            count(),
            2,
            "created_or_edited sends every update meeting the criteria"
        );
        Spi::run("UPDATE claim SET status = 'void'").unwrap();
        assert_eq!(count(), 2, "an update no longer meeting the criteria");
    }

    #[pg_test]
    fn edited_to_meet_criteria_sends_only_when_a_row_starts_meeting_them() {
        Spi::run(
            "CREATE TABLE deal (id int PRIMARY KEY, stage text);
             SELECT outbound_msg.create_message('deal', 'Won', 'Won', 'http://127.0.0.1:9/',
                    ARRAY['stage'], 'postgres', evaluate => 'edited_to_meet_criteria',
                    criteria => 'stage = ''won''');
             INSERT INTO deal VALUES (1, 'won'), (2, 'open'), (3, NULL);",
        )
        .unwrap();
        assert_eq!(count(), 1, "an insert meeting the criteria");
        Spi::run("UPDATE deal SET stage = 'won' WHERE id = 1").unwrap();
        assert_eq!(count(), 1, "already met: not sent again");
        Spi::run("UPDATE deal SET stage = 'won' WHERE id IN (2, 3)").unwrap();
        assert_eq!(count(), 3, "open -> won and NULL -> won start meeting them");
        Spi::run("UPDATE deal SET stage = 'lost' WHERE id = 2").unwrap();
        Spi::run("UPDATE deal SET stage = 'won' WHERE id = 2").unwrap();
        assert_eq!(count(), 4, "lost -> won meets them again");
    }

    #[pg_test]
    fn created_with_criteria_sends_matching_inserts_only() {
        Spi::run(
            "CREATE TABLE lead (id int PRIMARY KEY, hot bool);
             SELECT outbound_msg.create_message('lead', 'Hot', 'Hot', 'http://127.0.0.1:9/',
                    ARRAY['hot'], 'postgres', evaluate => 'created', criteria => 'hot');
             INSERT INTO lead VALUES (1, true), (2, false);
             UPDATE lead SET hot = true;",
        )
        .unwrap();
        assert_eq!(count(), 1);
    }

    #[pg_test]
    fn send_queues_the_row_with_that_key() {
        Spi::run(
            "CREATE TABLE account (id bigint PRIMARY KEY, name text);
             INSERT INTO account VALUES (41, 'before'), (42, 'Acme');
             SELECT outbound_msg.create_message('account', 'A', 'A', 'http://127.0.0.1:9/',
                    ARRAY['name'], 'postgres', evaluate => 'created');",
        )
        .unwrap();
        let id = Spi::get_one::<String>("SELECT outbound_msg.send('account', 'A', '42')")
            .unwrap()
            .unwrap();
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("04l"));
        assert_eq!(
            payloads(),
            vec!["     <sf:Id>42</sf:Id>\n     <sf:name>Acme</sf:name>\n"]
        );
    }

    #[pg_test]
    fn inactive_message_captures_nothing() {
        Spi::run(
            "CREATE TABLE quiet (id int PRIMARY KEY);
             SELECT outbound_msg.create_message('quiet', 'Q', 'Q', 'http://127.0.0.1:9/',
                                                ARRAY[]::text[], 'postgres', active => false);
             INSERT INTO quiet VALUES (1);",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT coalesce(sum(cardinality(record_ids)), 0)::bigint FROM outbound_msg.queue"
            )
            .unwrap(),
            Some(0)
        );
    }
}
