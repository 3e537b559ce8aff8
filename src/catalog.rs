//! Outbound message definitions: the `outbound_msg.message` table and the SQL functions that
//! write it. Only this module writes definitions; capture and the worker read them through
//! [`active_messages`] and the queue's claim query.
//!
//! A definition is written together with the table's capture trigger, in the caller's
//! transaction: a refused call leaves neither behind.

use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};

use crate::error::{Error, Kind, Result};
use crate::sqltypes::{RegClass, RegRole};

/// Name of the row trigger that captures changes for every message of a table.
pub const TRIGGER_NAME: &str = "outbound_msg_capture";

/// When a message captures a row (Salesforce's evaluation criteria).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluate {
    /// Inserts only.
    Created,
    /// Inserts and every update.
    CreatedOrEdited,
    /// Inserts meeting the criteria, and updates that make a row meet them.
    EditedToMeetCriteria,
}

impl Evaluate {
    fn parse(text: &str) -> Result<Evaluate> {
        match text {
            "created" => Ok(Evaluate::Created),
            "created_or_edited" => Ok(Evaluate::CreatedOrEdited),
            "edited_to_meet_criteria" => Ok(Evaluate::EditedToMeetCriteria),
            other => Err(Error::new(
                Kind::InvalidParameter,
                format!("invalid value for evaluate: \"{other}\""),
            )
            .with_hint("Use created, created_or_edited or edited_to_meet_criteria.")),
        }
    }
}

/// What capture needs to know of one active message of a table.
#[derive(Debug, Clone)]
pub struct Capture {
    pub message_id: i64,
    pub key_column: String,
    pub fields: Vec<String>,
    pub evaluate: Evaluate,
}

/// Defines an outbound message on `object` and installs the table's capture trigger.
#[allow(clippy::too_many_arguments)]
#[pg_extern]
fn create_message(
    object: RegClass,
    name: &str,
    unique_name: &str,
    endpoint_url: &str,
    fields: Vec<String>,
    send_as: RegRole,
    description: default!(Option<&str>, "NULL"),
    evaluate: default!(&str, "'created_or_edited'"),
    criteria: default!(Option<&str>, "NULL"),
    protected: default!(bool, false),
    client_certificate: default!(Option<&str>, "NULL"),
    active: default!(bool, true),
) -> std::result::Result<i64, pgrx::pg_sys::panic::ErrorReport> {
    let definition = Definition {
        object,
        name,
        unique_name,
        endpoint_url,
        fields,
        send_as,
        description,
        evaluate,
        criteria,
        protected,
        client_certificate,
        active,
    };
    Ok(Spi::connect_mut(|client| definition.create(client))?)
}

/// The arguments of `create_message`, checked and written as one unit.
struct Definition<'a> {
    object: RegClass,
    name: &'a str,
    unique_name: &'a str,
    endpoint_url: &'a str,
    fields: Vec<String>,
    send_as: RegRole,
    description: Option<&'a str>,
    evaluate: &'a str,
    criteria: Option<&'a str>,
    protected: bool,
    client_certificate: Option<&'a str>,
    active: bool,
}

impl Definition<'_> {
    fn create(self, client: &mut SpiClient) -> Result<i64> {
        let evaluate = Evaluate::parse(self.evaluate)?;
        if self.criteria.is_some() || evaluate == Evaluate::EditedToMeetCriteria {
            return Err(Error::new(
                Kind::FeatureNotSupported,
                "evaluation criteria are not supported yet",
            ));
        }
        if self.client_certificate.is_some() {
            return Err(Error::new(
                Kind::FeatureNotSupported,
                "client certificates are not supported yet",
            ));
        }
        let table = table_name(client, self.object)?;
        let key_column = single_primary_key(client, self.object, &table)?;
        let fields = sorted_fields(client, self.object, &table, self.fields)?;

        let id = client
            .update(
                "INSERT INTO outbound_msg.message
                     (object, name, unique_name, description, endpoint_url, fields, send_as,
                      evaluate, criteria, protected, client_certificate, active, key_column)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 RETURNING id",
                Some(1),
                &[
                    self.object.into(),
                    self.name.into(),
                    self.unique_name.into(),
                    self.description.into(),
                    self.endpoint_url.into(),
                    fields.into(),
                    self.send_as.into(),
                    self.evaluate.into(),
                    self.criteria.into(),
                    self.protected.into(),
                    self.client_certificate.into(),
                    self.active.into(),
                    key_column.as_str().into(),
                ],
            )?
            .first()
            .get_one::<i64>()?
            .ok_or_else(|| Error::new(Kind::Internal, "INSERT of a definition returned no id"))?;
        install_trigger(client, self.object, &table)?;
        Ok(id)
    }
}

/// The table's name as SQL text (schema-qualified when needed), or 42P01.
fn table_name(client: &SpiClient, object: RegClass) -> Result<String> {
    client
        .select(
            "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c
              WHERE c.oid = $1 AND c.relkind IN ('r', 'p')",
            Some(1),
            &[object.into()],
        )?
        .first()
        .get_one::<String>()
        .ok()
        .flatten()
        .ok_or_else(|| {
            Error::new(
                Kind::UndefinedTable,
                format!("relation with OID {} is not a table", object.0.to_u32()),
            )
        })
}

/// The single primary-key column whose value becomes the record `Id`.
fn single_primary_key(client: &SpiClient, object: RegClass, table: &str) -> Result<String> {
    let keys: Vec<String> = client
        .select(
            "SELECT a.attname::text FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_attribute a
                 ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = $1 AND i.indisprimary",
            None,
            &[object.into()],
        )?
        .filter_map(|row| row.get::<String>(1).ok().flatten())
        .collect();
    match keys.as_slice() {
        [key] => Ok(key.clone()),
        [] => Err(Error::new(
            Kind::InvalidTableDefinition,
            format!("table {table} has no primary key"),
        )
        .with_detail("The primary key's value is sent as the record Id.")),
        _ => Err(Error::new(
            Kind::FeatureNotSupported,
            format!("table {table} has a composite primary key"),
        )
        .with_detail("The record Id is a single primary-key column.")),
    }
}

/// The selected columns, checked to exist, without duplicates and in alphabetical order (the
/// order of the WSDL's sequence, in which they are sent).
fn sorted_fields(
    client: &SpiClient,
    object: RegClass,
    table: &str,
    mut fields: Vec<String>,
) -> Result<Vec<String>> {
    for field in &fields {
        let exists = client
            .select(
                "SELECT 1 FROM pg_catalog.pg_attribute
                  WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
                Some(1),
                &[object.into(), field.as_str().into()],
            )?
            .len()
            == 1;
        if !exists {
            return Err(Error::new(
                Kind::UndefinedColumn,
                format!("column \"{field}\" of table {table} does not exist"),
            ));
        }
    }
    fields.sort();
    fields.dedup();
    Ok(fields)
}

/// Installs the table's capture trigger unless a previous message already did.
fn install_trigger(client: &mut SpiClient, object: RegClass, table: &str) -> Result<()> {
    let present = client
        .select(
            "SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
            Some(1),
            &[object.into(), TRIGGER_NAME.into()],
        )?
        .len()
        == 1;
    if !present {
        // `table` is regclass output: already quoted and qualified as needed.
        client.update(
            &format!(
                "CREATE TRIGGER {} AFTER INSERT OR UPDATE ON {table}
                   FOR EACH ROW EXECUTE FUNCTION outbound_msg.capture()",
                quote_identifier(TRIGGER_NAME)
            ),
            None,
            &[],
        )?;
    }
    Ok(())
}

/// The active messages of a table, for capture. A row trigger defined on a partitioned table
/// fires on its partitions with the partition's OID, so the messages of every partition ancestor
/// count too.
pub fn active_messages(client: &SpiClient, relid: pg_sys::Oid) -> Result<Vec<Capture>> {
    let rows = client.select(
        "SELECT id, key_column::text, fields, evaluate
           FROM outbound_msg.message
          WHERE (object = $1 OR object IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($1)))
            AND active
          ORDER BY id",
        None,
        &[RegClass(relid).into()],
    )?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in rows {
        let evaluate: String = row.get(4)?.unwrap_or_default();
        messages.push(Capture {
            message_id: row.get(1)?.unwrap_or_default(),
            key_column: row.get(2)?.unwrap_or_default(),
            fields: row.get(3)?.unwrap_or_default(),
            evaluate: Evaluate::parse(&evaluate)?,
        });
    }
    Ok(messages)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn define(table: &str, fields: &str) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT outbound_msg.create_message('{table}', 'Demo', 'Demo', \
             'http://127.0.0.1:9/x', {fields}, 'postgres')"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn create_message_stores_sorted_fields_and_installs_the_trigger() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, b text, a text)").unwrap();
        let id = define("t", "ARRAY['b', 'a', 'b']");
        let fields = Spi::get_one::<Vec<String>>(&format!(
            "SELECT fields FROM outbound_msg.message WHERE id = {id}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(fields, vec!["a", "b"]);
        let triggers = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass \
             AND tgname = 'outbound_msg_capture'",
        )
        .unwrap();
        assert_eq!(triggers, Some(1));
        // A second message on the same table shares the trigger.
        Spi::run(
            "SELECT outbound_msg.create_message('t', 'Other', 'Other', 'http://127.0.0.1:9/y', \
             ARRAY['a'], 'postgres')",
        )
        .unwrap();
        let triggers =
            Spi::get_one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass")
                .unwrap();
        assert_eq!(triggers, Some(1));
    }

    #[pg_test(error = "table no_key has no primary key")]
    fn table_without_primary_key_is_refused() {
        Spi::run("CREATE TABLE no_key (id int, a text)").unwrap();
        define("no_key", "ARRAY['a']");
    }

    #[pg_test(error = "column \"nope\" of table t2 does not exist")]
    fn unknown_field_is_refused() {
        Spi::run("CREATE TABLE t2 (id int PRIMARY KEY, a text)").unwrap();
        define("t2", "ARRAY['a', 'nope']");
    }

    #[pg_test(error = "invalid value for evaluate: \"sometimes\"")]
    fn unknown_evaluate_is_refused() {
        Spi::run("CREATE TABLE t3 (id int PRIMARY KEY, a text)").unwrap();
        Spi::run(
            "SELECT outbound_msg.create_message('t3', 'D', 'D', 'http://127.0.0.1:9/', \
             ARRAY['a'], 'postgres', evaluate => 'sometimes')",
        )
        .unwrap();
    }
}
