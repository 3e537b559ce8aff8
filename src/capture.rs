//! The capture trigger: an `AFTER INSERT OR UPDATE ... FOR EACH ROW` trigger that renders the
//! changed row's key and selected columns into one queued notification per active message of
//! the table, in the changing transaction (a rollback sends nothing).
//!
//! Values are captured as they are at the time of the change and stored ready to send.

use std::num::NonZeroUsize;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::PgTupleDesc;

use crate::catalog::{self, Capture, Evaluate};
use crate::error::{Error, Kind};
use crate::{queue, soap, wire};

/// Trigger function installed by `create_message` on every table that has messages.
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
    let relid = trigger.relid().map_err(misuse)?;
    let data = trigger.trigger_data();
    // SAFETY: for a row trigger on INSERT the new row is tg_trigtuple, on UPDATE tg_newtuple;
    // both and the relation's descriptor live until the trigger returns.
    let row = unsafe {
        Row {
            tuple: if is_update {
                data.tg_newtuple
            } else {
                data.tg_trigtuple
            },
            desc: PgTupleDesc::from_pg_unchecked((*data.tg_relation).rd_att),
        }
    };
    Spi::connect_mut(|client| {
        for message in catalog::active_messages(client, relid)? {
            if is_update && message.evaluate == Evaluate::Created {
                continue;
            }
            enqueue_row(client, &message, &row)?;
        }
        Ok(())
    })
}

/// Renders `row` for `message` and queues it.
fn enqueue_row(client: &mut SpiClient, message: &Capture, row: &Row) -> crate::error::Result<()> {
    let key = row.value(&message.key_column)?.ok_or_else(|| {
        Error::new(
            Kind::Internal,
            format!("primary key column \"{}\" has no value", message.key_column),
        )
    })?;
    let mut values = Vec::with_capacity(message.fields.len());
    for field in &message.fields {
        values.push((field.as_str(), row.value(field)?));
    }
    let payload = soap::render_fields(&key, values.iter().map(|(n, v)| (*n, v.as_deref())));
    queue::enqueue(client, message.message_id, &key, &payload)
}

/// The changed row, read through its relation's descriptor.
struct Row<'a> {
    tuple: *mut pg_sys::HeapTupleData,
    desc: PgTupleDesc<'a>,
}

impl Row<'_> {
    /// The wire text of column `name`, `None` when NULL or not representable.
    fn value(&self, name: &str) -> crate::error::Result<Option<String>> {
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
                .with_hint("A column sent by an outbound message was dropped or renamed.")
            })?;
        let attno = NonZeroUsize::new(index + 1).expect("index + 1 is never zero");
        // SAFETY: `tuple` is the trigger's row and `desc` its relation's descriptor.
        let datum = unsafe { pgrx::htup::heap_getattr_raw(self.tuple, attno, self.desc.as_ptr()) };
        // SAFETY: a non-NULL datum of the attribute's own type.
        Ok(datum.and_then(|datum| unsafe { wire::wire_text(datum, attribute.type_oid().value()) }))
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
                    "SELECT payload FROM outbound_msg.notification ORDER BY id",
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
        assert_eq!(count("SELECT count(*) FROM outbound_msg.notification"), 3);
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
            Spi::get_one::<i64>("SELECT count(*) FROM outbound_msg.notification").unwrap(),
            Some(0)
        );
    }
}
