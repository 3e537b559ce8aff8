//! Outbound message definitions: the `outbound_msg.message` table and the SQL functions that
//! define, alter, drop, enable and disable messages, and describe them as WSDL.
//!
//! Only this module (and the DDL event trigger of `sql/finalize.sql` that follows table drops)
//! writes definitions. Every setting is checked with the calling role's privileges before
//! anything is written; the writes then run as the extension's owner, in the caller's
//! transaction, so a refused call leaves no row and no trigger behind.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};

use super::{certificates, criteria, validate};
use crate::capture::encode;
use crate::error::{required, required_elements, required_message, Error, Kind, Result};
use crate::relations::extension_relation;
use crate::sqltypes::{RegClass, RegRole};
use crate::wire::wsdl;
use crate::{guc, queue, roles, secrets};

/// The trigger of a table with messages, which captures each change (what a statement captured
/// is written when it finishes: see `capture::statement`).
const TRIGGER: &str = "outbound_msg_capture";

/// Field names the base `sObject` type already has.
const RESERVED_FIELDS: [&str; 2] = ["Id", "fieldsToNull"];

/// When a message captures a row (Salesforce's evaluation criteria).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evaluate {
    /// Inserts only (that meet the criteria, if any).
    Created,
    /// Inserts and every update (that meet the criteria, if any).
    CreatedOrEdited,
    /// Inserts meeting the criteria, and updates after which the row meets them and before
    /// which it did not.
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
    /// Named in the CONTEXT of an error its criteria raise.
    pub unique_name: String,
    pub key_column: String,
    pub fields: Vec<String>,
    pub evaluate: Evaluate,
    pub criteria: Option<String>,
    /// The message's table name, quoted: how criteria name the row.
    pub table_alias: String,
    /// The message's table (a partitioned parent for rows of its partitions).
    pub object: pg_sys::Oid,
    /// The message's table as SQL text.
    pub table: String,
    pub send_as: pg_sys::Oid,
    /// SQL type of the key column, to look a row up by its key.
    pub key_type: String,
}

/// Every setting of one message, as stored.
#[derive(Debug, Clone)]
struct Settings {
    object: pg_sys::Oid,
    name: String,
    unique_name: String,
    description: Option<String>,
    endpoint_url: String,
    fields: Vec<String>,
    send_as: pg_sys::Oid,
    evaluate: String,
    criteria: Option<String>,
    protected: bool,
    client_certificate: Option<String>,
    active: bool,
}

/// Defines an outbound message on `object` and installs the table's capture trigger.
#[allow(clippy::too_many_arguments)]
#[pg_extern]
fn create_message(
    object: Option<RegClass>,
    name: Option<&str>,
    unique_name: Option<&str>,
    endpoint_url: Option<&str>,
    fields: Option<Vec<Option<String>>>,
    send_as: Option<RegRole>,
    description: default!(Option<&str>, "NULL"),
    evaluate: default!(Option<&str>, "'created_or_edited'"),
    criteria: default!(Option<&str>, "NULL"),
    protected: default!(Option<bool>, false),
    client_certificate: default!(Option<&str>, "NULL"),
    active: default!(Option<bool>, true),
) -> std::result::Result<i64, ErrorReport> {
    let settings = Settings {
        object: required(object, "object")?.0,
        name: required(name, "name")?.to_string(),
        unique_name: required(unique_name, "unique_name")?.to_string(),
        description: description.map(str::to_string),
        endpoint_url: required(endpoint_url, "endpoint_url")?.to_string(),
        fields: required_elements(fields, "fields")?,
        send_as: required(send_as, "send_as")?.0,
        evaluate: required(evaluate, "evaluate")?.to_string(),
        criteria: criteria.map(str::to_string),
        protected: required(protected, "protected")?,
        client_certificate: client_certificate.map(str::to_string),
        active: required(active, "active")?,
    };
    roles::api_call(|client, caller| {
        let checked = check(client, settings, None, None, caller)?;
        let id = insert(client, &checked)?;
        install_trigger(client, &checked.table)?;
        Ok(id)
    })
}

/// Changes settings of a message; NULL keeps a setting as it is, and an empty string removes
/// an optional one (`description`, `criteria`, `client_certificate`).
#[allow(clippy::too_many_arguments)]
#[pg_extern]
fn alter_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
    name: default!(Option<&str>, "NULL"),
    new_unique_name: default!(Option<&str>, "NULL"),
    description: default!(Option<&str>, "NULL"),
    endpoint_url: default!(Option<&str>, "NULL"),
    fields: default!(Option<Vec<Option<String>>>, "NULL"),
    send_as: default!(Option<RegRole>, "NULL"),
    evaluate: default!(Option<&str>, "NULL"),
    criteria: default!(Option<&str>, "NULL"),
    protected: default!(Option<bool>, "NULL"),
    client_certificate: default!(Option<&str>, "NULL"),
    active: default!(Option<bool>, "NULL"),
) -> std::result::Result<(), ErrorReport> {
    let optional = |value: Option<&str>, current: Option<String>| match value {
        None => current,
        Some("") => None,
        Some(text) => Some(text.to_string()),
    };
    let (object, unique_name) = required_message(object, unique_name)?;
    let fields = fields
        .map(|fields| required_elements(Some(fields), "fields"))
        .transpose()?;
    roles::api_call(|client, caller| {
        let Stored {
            id,
            settings: current,
            ..
        } = find(client, object, unique_name)?;
        refuse_if_protected(&current, caller)?;
        let stored_criteria = current.criteria.clone();
        let changed = Settings {
            object: current.object,
            name: name.map_or(current.name, str::to_string),
            unique_name: new_unique_name.map_or(current.unique_name, str::to_string),
            description: optional(description, current.description),
            endpoint_url: endpoint_url.map_or(current.endpoint_url, str::to_string),
            fields: fields.unwrap_or(current.fields),
            send_as: send_as.map_or(current.send_as, |role| role.0),
            evaluate: evaluate.map_or(current.evaluate, str::to_string),
            criteria: optional(criteria, current.criteria),
            protected: protected.unwrap_or(current.protected),
            client_certificate: optional(client_certificate, current.client_certificate),
            active: active.unwrap_or(current.active),
        };
        let checked = check(
            client,
            changed,
            Some(id),
            stored_criteria.as_deref(),
            caller,
        )?;
        update(client, id, &checked)?;
        Ok(())
    })
}

/// Removes a message, its queued notifications, and the table's trigger when no message is left.
#[pg_extern]
fn drop_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
) -> std::result::Result<(), ErrorReport> {
    let (object, unique_name) = required_message(object, unique_name)?;
    roles::api_call(|client, caller| {
        let stored = find(client, object, unique_name)?;
        refuse_if_protected(&stored.settings, caller)?;
        // Rows this transaction captured and has not written yet go too.
        crate::capture::statement::forget_message(stored.id);
        let discarded = queue::forget_message(client, stored.id)?;
        if discarded > 0 {
            notice!(
                "outbound message \"{unique_name}\" dropped with {discarded} queued \
                 notification{} discarded",
                if discarded == 1 { "" } else { "s" }
            );
        }
        client.update(
            "DELETE FROM outbound_msg.message WHERE id = $1",
            None,
            &[stored.id.into()],
        )?;
        let left = client
            .select(
                "SELECT 1 FROM outbound_msg.message WHERE object = $1",
                Some(1),
                &[object.into()],
            )?
            .len();
        if left == 0 {
            let table = table_text(client, object.0)?;
            let drop = format!(
                "DROP TRIGGER IF EXISTS {} ON {table}",
                quote_identifier(TRIGGER)
            );
            client.update(&drop, None, &[])?;
        }
        Ok(())
    })
}

/// Makes a message capture again.
#[pg_extern]
fn enable_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
) -> std::result::Result<(), ErrorReport> {
    set_active(object, unique_name, true)
}

/// Stops a message capturing; notifications already queued are still delivered.
#[pg_extern]
fn disable_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
) -> std::result::Result<(), ErrorReport> {
    set_active(object, unique_name, false)
}

fn set_active(
    object: Option<RegClass>,
    unique_name: Option<&str>,
    active: bool,
) -> std::result::Result<(), ErrorReport> {
    let (object, unique_name) = required_message(object, unique_name)?;
    roles::api_call(|client, caller| {
        let stored = find(client, object, unique_name)?;
        refuse_if_protected(&stored.settings, caller)?;
        client.update(
            "UPDATE outbound_msg.message SET active = $2 WHERE id = $1",
            None,
            &[stored.id.into(), active.into()],
        )?;
        Ok(())
    })
}

/// The WSDL a listener for this message is built from, with its endpoint as `soap:address`.
#[pg_extern(stable)]
fn wsdl(
    object: Option<RegClass>,
    unique_name: Option<&str>,
) -> std::result::Result<String, ErrorReport> {
    let (object, unique_name) = required_message(object, unique_name)?;
    roles::api_call(|client, _caller| {
        let settings = find(client, object, unique_name)?.settings;
        let table = relation_name(client, settings.object)?;
        let mut typed = Vec::with_capacity(settings.fields.len());
        for field in &settings.fields {
            let typoid = client
                .select(
                    "SELECT atttypid FROM pg_catalog.pg_attribute
                      WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
                    Some(1),
                    &[object.into(), field.as_str().into()],
                )?
                .first()
                .get_one::<pg_sys::Oid>()?
                .unwrap_or(pg_sys::TEXTOID);
            typed.push((field.as_str(), encode::xsd_type(typoid)));
        }
        let fields: Vec<wsdl::Field> = typed
            .iter()
            .map(|(name, xsd_type)| wsdl::Field { name, xsd_type })
            .collect();
        let location = secrets::mask_credentials(&settings.endpoint_url);
        Ok(wsdl::generate(&table, &fields, &location))
    })
}

/// Whether `name` can name an XML element or type: the DDL guard refuses renaming a table
/// with messages to a name that cannot be its sObject type.
#[pg_extern(immutable, parallel_safe)]
fn is_xml_name(name: &str) -> bool {
    validate::xml_name(name).is_ok()
}

/// The endpoint of a URL as endpoint health knows it: scheme, host and port (never
/// credentials), as the `outbound_msg.endpoints` view groups messages.
#[pg_extern(immutable, parallel_safe)]
fn endpoint_of(url: &str) -> String {
    validate::endpoint_of(url)
}

/// The active messages of a table, for capture. A row trigger defined on a partitioned table
/// fires on its partitions with the partition's OID, so the messages of every partition ancestor
/// count too.
pub fn active_messages(client: &SpiClient, relid: pg_sys::Oid) -> Result<Vec<Capture>> {
    let rows = client.select(
        "SELECT m.id, m.key_column::text, m.fields, m.evaluate, m.criteria, quote_ident(c.relname),
                m.object::oid, m.object::text, m.send_as::oid,
                format_type(a.atttypid, a.atttypmod), m.unique_name
           FROM outbound_msg.message m JOIN pg_catalog.pg_class c ON c.oid = m.object
           JOIN pg_catalog.pg_attribute a ON a.attrelid = m.object AND a.attname = m.key_column
          WHERE (m.object = $1 OR m.object IN (SELECT relid FROM pg_catalog.pg_partition_ancestors($1)))
            AND m.active
          ORDER BY m.id",
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
            criteria: row.get(5)?,
            table_alias: row.get(6)?.unwrap_or_default(),
            object: row.get(7)?.unwrap_or(pg_sys::InvalidOid),
            table: row.get(8)?.unwrap_or_default(),
            send_as: row.get(9)?.unwrap_or(pg_sys::InvalidOid),
            key_type: row.get(10)?.unwrap_or_default(),
            unique_name: row.get(11)?.unwrap_or_default(),
        });
    }
    Ok(messages)
}

/// The id of the message named `unique_name` on `object`, or 42704; 42501 when it is protected
/// and `caller` is not a superuser (its notifications are a superuser's to retry or discard).
pub fn unprotected_message_id(
    client: &SpiClient,
    object: RegClass,
    unique_name: &str,
    caller: pg_sys::Oid,
) -> Result<i64> {
    let stored = find(client, object, unique_name)?;
    refuse_if_protected(&stored.settings, caller)?;
    Ok(stored.id)
}

/// Refuses (42501) when message `message_id` is protected and `caller` is not a superuser.
pub fn refuse_if_protected_id(
    client: &SpiClient,
    message_id: i64,
    caller: pg_sys::Oid,
) -> Result<()> {
    let rows = client.select(
        "SELECT unique_name FROM outbound_msg.message WHERE id = $1 AND protected",
        Some(1),
        &[message_id.into()],
    )?;
    match rows.first().get_one::<String>() {
        Ok(Some(unique_name)) if !roles::is_superuser(caller) => Err(protected(&unique_name)),
        _ => Ok(()),
    }
}

/// What `send` needs of a message: its id, send-as role, key column, fields and activity.
pub struct Sendable {
    pub message_id: i64,
    pub send_as: pg_sys::Oid,
    pub key_column: String,
    pub fields: Vec<String>,
    pub object: pg_sys::Oid,
    pub table: String,
}

/// Looks a message up for an explicit send by `caller`; refuses an inactive one, and a caller
/// who is not a member of its send-as role (as defining it would).
pub fn sendable(
    client: &SpiClient,
    object: RegClass,
    unique_name: &str,
    caller: pg_sys::Oid,
) -> Result<Sendable> {
    let Stored {
        id,
        key_column,
        settings,
    } = find(client, object, unique_name)?;
    check_send_as(client, settings.send_as, caller)?;
    if !settings.active {
        return Err(Error::new(
            Kind::ObjectNotInPrerequisiteState,
            format!("outbound message \"{unique_name}\" is inactive"),
        )
        .with_hint("Enable it with outbound_msg.enable_message first."));
    }
    Ok(Sendable {
        message_id: id,
        send_as: settings.send_as,
        key_column,
        fields: settings.fields,
        object: settings.object,
        table: table_text(client, settings.object)?,
    })
}

/// A checked definition, ready to be written.
struct Checked {
    settings: Settings,
    table: String,
    key_column: String,
    /// The calling role, recorded as `created_by`.
    caller: pg_sys::Oid,
}

/// Checks every setting (SPEC §1) with the caller's privileges. `id` is the message being
/// altered, if any, and `stored_criteria` its criteria as stored. Returns the settings with
/// fields in sending (alphabetical) order and criteria in their resolved form.
fn check(
    client: &SpiClient,
    mut settings: Settings,
    id: Option<i64>,
    stored_criteria: Option<&str>,
    caller: pg_sys::Oid,
) -> Result<Checked> {
    let table = table_text(client, settings.object)?;
    check_table(client, settings.object, &table)?;
    let key_column = single_primary_key(client, settings.object, &table)?;

    validate::name(&settings.name)
        .map_err(|reason| invalid(format!("name \"{}\" is invalid: {reason}", settings.name)))?;
    validate::unique_name(&settings.unique_name).map_err(|reason| {
        invalid(format!(
            "unique name \"{}\" is invalid: {reason}",
            settings.unique_name
        ))
    })?;
    check_unique_name_is_free(client, &settings, &table, id)?;
    check_endpoint(&settings.endpoint_url)?;

    let role = check_send_as(client, settings.send_as, caller)?;
    settings.fields = check_fields(client, settings.object, &table, settings.fields)?;
    check_role_can_read(client, &settings, &table, &role, &key_column)?;

    let evaluate = Evaluate::parse(&settings.evaluate)?;
    match settings.criteria.take() {
        // Stored criteria were resolved when they were given: kept as they are.
        Some(text) if stored_criteria == Some(text.as_str()) => settings.criteria = Some(text),
        Some(text) => {
            settings.criteria = Some(criteria::resolve(settings.object, &text, caller)?);
        }
        None if evaluate == Evaluate::EditedToMeetCriteria => {
            return Err(invalid("evaluate edited_to_meet_criteria needs criteria")
                .with_hint("Give criteria, or use created or created_or_edited."));
        }
        None => {}
    }
    if let Some(name) = &settings.client_certificate {
        certificates::require(client, name)?;
    }
    Ok(Checked {
        settings,
        table,
        key_column,
        caller,
    })
}

/// A valid endpoint URL, allowed by `outbound_msg.allowed_endpoints`. Errors show the URL
/// with its password masked.
fn check_endpoint(url: &str) -> Result<()> {
    let shown = secrets::mask_credentials(url);
    validate::endpoint_url(url)
        .map_err(|reason| invalid(format!("endpoint URL \"{shown}\" is invalid: {reason}")))?;
    if !validate::host_allowed(&guc::allowed_endpoints(), url) {
        return Err(Error::new(
            Kind::InsufficientPrivilege,
            format!("endpoint URL \"{shown}\" is not allowed by outbound_msg.allowed_endpoints"),
        )
        .with_hint("A superuser sets outbound_msg.allowed_endpoints."));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(Kind::InvalidParameter, message)
}

/// The table's name as SQL text (schema-qualified when needed), or 42P01.
fn table_text(client: &SpiClient, object: pg_sys::Oid) -> Result<String> {
    client
        .select(
            "SELECT $1::regclass::text",
            Some(1),
            &[RegClass(object).into()],
        )?
        .first()
        .get_one::<String>()?
        .filter(|name| name.parse::<u32>().is_err())
        .ok_or_else(|| {
            Error::new(
                Kind::UndefinedTable,
                format!("relation with OID {} does not exist", object.to_u32()),
            )
        })
}

/// The bare relation name: the sObject type in messages and the WSDL.
fn relation_name(client: &SpiClient, object: pg_sys::Oid) -> Result<String> {
    Ok(client
        .select(
            "SELECT relname::text FROM pg_catalog.pg_class WHERE oid = $1",
            Some(1),
            &[object.into()],
        )?
        .first()
        .get_one::<String>()?
        .unwrap_or_default())
}

/// Only ordinary and partitioned tables, permanent, whose name can be an XML type name.
fn check_table(client: &SpiClient, object: pg_sys::Oid, table: &str) -> Result<()> {
    let row = client
        .select(
            "SELECT relkind::text, relpersistence::text, relname::text
               FROM pg_catalog.pg_class WHERE oid = $1",
            Some(1),
            &[object.into()],
        )?
        .first()
        .get_three::<String, String, String>()?;
    let (Some(kind), Some(persistence), Some(name)) = row else {
        return Err(Error::new(
            Kind::UndefinedTable,
            format!("relation {table} does not exist"),
        ));
    };
    if kind != "r" && kind != "p" {
        return Err(
            Error::new(Kind::WrongObjectType, format!("{table} is not a table"))
                .with_detail("Outbound messages are defined on ordinary or partitioned tables."),
        );
    }
    if persistence == "t" {
        return Err(Error::new(
            Kind::WrongObjectType,
            format!("{table} is a temporary table"),
        )
        .with_detail("A definition would outlive the session that owns the table."));
    }
    validate::xml_name(&name)
        .and_then(|()| {
            if name == "sObject" {
                Err("it is the name of the base type")
            } else {
                Ok(())
            }
        })
        .map_err(|reason| {
            invalid(format!(
                "table name \"{name}\" cannot be an sObject type: {reason}"
            ))
        })
}

/// The single primary-key column whose value becomes the record `Id`.
fn single_primary_key(client: &SpiClient, object: pg_sys::Oid, table: &str) -> Result<String> {
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

fn check_unique_name_is_free(
    client: &SpiClient,
    settings: &Settings,
    table: &str,
    id: Option<i64>,
) -> Result<()> {
    let free = client
        .select(
            "SELECT 1 FROM outbound_msg.message
              WHERE object = $1 AND unique_name = $2 AND id IS DISTINCT FROM $3",
            Some(1),
            &[
                RegClass(settings.object).into(),
                settings.unique_name.as_str().into(),
                id.into(),
            ],
        )?
        .is_empty();
    if !free {
        return Err(Error::new(
            Kind::DuplicateObject,
            format!(
                "outbound message \"{}\" already exists on table {table}",
                settings.unique_name
            ),
        ));
    }
    Ok(())
}

/// The send-as role must exist and the caller must be a member of it (or a superuser). Returns
/// its name.
fn check_send_as(client: &SpiClient, send_as: pg_sys::Oid, caller: pg_sys::Oid) -> Result<String> {
    let role = client
        .select(
            "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1",
            Some(1),
            &[send_as.into()],
        )?
        .first()
        .get_one::<String>()?
        .ok_or_else(|| {
            Error::new(
                Kind::UndefinedObject,
                format!("role with OID {} does not exist", send_as.to_u32()),
            )
        })?;
    if !roles::is_superuser(caller) && !roles::is_member_of(caller, send_as) {
        return Err(Error::new(
            Kind::InsufficientPrivilege,
            format!("must be a member of role \"{role}\" to send as it"),
        ));
    }
    Ok(role)
}

/// Selected columns: existing, user columns, distinct, valid XML names, not names of the base
/// sObject. Returned in sending (alphabetical) order.
fn check_fields(
    client: &SpiClient,
    object: pg_sys::Oid,
    table: &str,
    mut fields: Vec<String>,
) -> Result<Vec<String>> {
    for (index, field) in fields.iter().enumerate() {
        let attnum = client
            .select(
                "SELECT attnum FROM pg_catalog.pg_attribute
                  WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
                Some(1),
                &[object.into(), field.as_str().into()],
            )?
            .first()
            .get_one::<i16>()
            .ok()
            .flatten();
        match attnum {
            None => {
                return Err(Error::new(
                    Kind::UndefinedColumn,
                    format!("column \"{field}\" of table {table} does not exist"),
                ))
            }
            Some(attnum) if attnum < 0 => {
                return Err(invalid(format!("column \"{field}\" is a system column"))
                    .with_detail("Only user columns can be sent."))
            }
            Some(_) => {}
        }
        if fields[..index].contains(field) {
            return Err(Error::new(
                Kind::DuplicateColumn,
                format!("column \"{field}\" is listed more than once in fields"),
            ));
        }
        if RESERVED_FIELDS.contains(&field.as_str()) {
            return Err(invalid(format!(
                "column \"{field}\" cannot be sent: sObject already has a field \"{field}\""
            ))
            .with_hint(
                "The primary key is always sent as Id; rename the column or leave it out.",
            ));
        }
        validate::xml_name(field)
            .map_err(|reason| invalid(format!("column \"{field}\" cannot be sent: {reason}")))?;
    }
    fields.sort();
    Ok(fields)
}

/// The send-as role must be able to SELECT the key and every field; names those it cannot.
fn check_role_can_read(
    client: &SpiClient,
    settings: &Settings,
    table: &str,
    role: &str,
    key_column: &str,
) -> Result<()> {
    let mut columns: Vec<String> = vec![key_column.to_string()];
    columns.extend(settings.fields.iter().filter(|f| *f != key_column).cloned());
    let unreadable: Vec<String> = client
        .select(
            "SELECT c FROM unnest($3::text[]) c
              WHERE NOT pg_catalog.has_column_privilege($1, $2, c, 'SELECT')",
            None,
            &[
                RegRole(settings.send_as).into(),
                RegClass(settings.object).into(),
                columns.into(),
            ],
        )?
        .filter_map(|row| row.get::<String>(1).ok().flatten())
        .collect();
    if unreadable.is_empty() {
        return Ok(());
    }
    let list = unreadable
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::new(
        Kind::InsufficientPrivilege,
        format!("role \"{role}\" cannot read column(s) {list} of table {table}"),
    )
    .with_hint("Grant SELECT on these columns to the send-as role, or leave them out."))
}

/// A stored definition.
struct Stored {
    id: i64,
    key_column: String,
    settings: Settings,
}

/// The message named `unique_name` on `object`, or 42704.
fn find(client: &SpiClient, object: RegClass, unique_name: &str) -> Result<Stored> {
    let rows = client.select(
        "SELECT id, name, unique_name, description, endpoint_url, fields, send_as::oid, evaluate,
                criteria, protected, client_certificate, active, key_column::text
           FROM outbound_msg.message WHERE object = $1 AND unique_name = $2",
        Some(1),
        &[object.into(), unique_name.into()],
    )?;
    let Some(row) = rows.into_iter().next() else {
        let table = table_text(client, object.0)?;
        return Err(Error::new(
            Kind::UndefinedObject,
            format!("outbound message \"{unique_name}\" does not exist on table {table}"),
        ));
    };
    let settings = Settings {
        object: object.0,
        name: row.get(2)?.unwrap_or_default(),
        unique_name: row.get(3)?.unwrap_or_default(),
        description: row.get(4)?,
        endpoint_url: row.get(5)?.unwrap_or_default(),
        fields: row.get(6)?.unwrap_or_default(),
        send_as: row.get(7)?.unwrap_or(pg_sys::InvalidOid),
        evaluate: row.get(8)?.unwrap_or_default(),
        criteria: row.get(9)?,
        protected: row.get(10)?.unwrap_or(false),
        client_certificate: row.get(11)?,
        active: row.get(12)?.unwrap_or(true),
    };
    Ok(Stored {
        id: row.get(1)?.unwrap_or_default(),
        key_column: row.get(13)?.unwrap_or_default(),
        settings,
    })
}

/// A protected message can be altered, enabled, disabled or dropped by a superuser only.
fn refuse_if_protected(settings: &Settings, caller: pg_sys::Oid) -> Result<()> {
    if settings.protected && !roles::is_superuser(caller) {
        return Err(protected(&settings.unique_name));
    }
    Ok(())
}

fn protected(unique_name: &str) -> Error {
    Error::new(
        Kind::InsufficientPrivilege,
        format!("outbound message \"{unique_name}\" is protected"),
    )
    .with_hint(
        "Only a superuser can change or drop a protected message, or retry or discard its notifications.",
    )
}

fn insert(client: &mut SpiClient, checked: &Checked) -> Result<i64> {
    let mut args = stored_values(checked);
    args.push(RegRole(checked.caller).into());
    client
        .update(
            "INSERT INTO outbound_msg.message
                 (object, name, unique_name, description, endpoint_url, fields, send_as,
                  evaluate, criteria, protected, client_certificate, active, key_column, created_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::regrole::name)
             RETURNING id",
            // No row limit: a statement SPI stops at a limit does not end, and the table's
            // statement trigger (which tells every backend of the new definition) never fires.
            None,
            &args,
        )?
        .first()
        .get_one::<i64>()?
        .ok_or_else(|| Error::new(Kind::Internal, "INSERT of a definition returned no id"))
}

fn update(client: &mut SpiClient, id: i64, checked: &Checked) -> Result<()> {
    let mut args = stored_values(checked);
    args.push(id.into());
    client.update(
        "UPDATE outbound_msg.message
            SET object = $1, name = $2, unique_name = $3, description = $4, endpoint_url = $5,
                fields = $6, send_as = $7, evaluate = $8, criteria = $9, protected = $10,
                client_certificate = $11, active = $12, key_column = $13
          WHERE id = $14",
        None,
        &args,
    )?;
    Ok(())
}

/// The stored columns of a definition, as `$1` to `$13` of [`insert`] and [`update`].
fn stored_values(checked: &Checked) -> Vec<pgrx::datum::DatumWithOid<'_>> {
    let s = &checked.settings;
    vec![
        RegClass(s.object).into(),
        s.name.as_str().into(),
        s.unique_name.as_str().into(),
        s.description.as_deref().into(),
        s.endpoint_url.as_str().into(),
        s.fields.clone().into(),
        RegRole(s.send_as).into(),
        s.evaluate.as_str().into(),
        s.criteria.as_deref().into(),
        s.protected.into(),
        s.client_certificate.as_deref().into(),
        s.active.into(),
        checked.key_column.as_str().into(),
    ]
}

/// The definitions table, `outbound_msg.message` (InvalidOid while the extension is absent).
pub fn definitions_table() -> pg_sys::Oid {
    extension_relation(c"message")
}

/// The definitions table's statement trigger, in a module of its own: pgrx's macro names
/// `Result`, which this file's error alias would shadow.
mod written {
    use pgrx::prelude::*;

    /// Statement trigger of `outbound_msg.message` (sql/finalize.sql): definitions written
    /// round the SQL API (pg_restore's COPY, a superuser's own DML) reach every backend's
    /// capture and the delivery worker as the API's own writes do.
    #[pg_trigger]
    fn definitions_written<'a>(
        _trigger: &'a PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        super::invalidate_definitions();
        Ok(None)
    }
}

/// Tells every backend, at commit, that definitions changed (a relcache invalidation of the
/// definitions table reaches them all), and this one at once. Called by the table's statement
/// trigger, for every write of definitions.
fn invalidate_definitions() {
    let table = definitions_table();
    if table != pg_sys::InvalidOid {
        // SAFETY: queues a transactional invalidation message for a relation that exists.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(table) };
    }
    definitions_changed();
}

thread_local! {
    /// Bumped when definitions may have changed: by this backend's catalog writes at once,
    /// and by invalidations (another backend's committed definitions, GRANT, REVOKE, policies,
    /// role changes), which PostgreSQL delivers to every backend and capture passes on here.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

/// Makes the next capture look definitions up again.
pub fn definitions_changed() {
    GENERATION.set(GENERATION.get() + 1);
}

/// The current generation of definitions: what capture read at an older one is stale.
pub fn definitions_generation() -> u64 {
    GENERATION.get()
}

/// Installs the table's trigger unless a previous message already did.
fn install_trigger(client: &mut SpiClient, table: &str) -> Result<()> {
    let present = client
        .select(
            "SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1::regclass AND tgname = $2",
            Some(1),
            &[table.into(), TRIGGER.into()],
        )?
        .len()
        == 1;
    if !present {
        // `table` is regclass output: already quoted and qualified as needed.
        let create = format!(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION outbound_msg.capture()",
            quote_identifier(TRIGGER)
        );
        client.update(&create, None, &[])?;
    }
    Ok(())
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql).unwrap().unwrap()
    }

    fn define(table: &str, unique_name: &str, fields: &str) -> i64 {
        one(&format!(
            "SELECT outbound_msg.create_message('{table}', 'Demo', '{unique_name}', \
             'http://127.0.0.1:9/x', {fields}, 'postgres')"
        ))
    }

    fn triggers(table: &str) -> i64 {
        one(&format!(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{table}'::regclass \
             AND tgname = 'outbound_msg_capture'"
        ))
    }

    #[pg_test]
    fn create_message_stores_sorted_fields_and_installs_one_trigger() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY, b text, a text)").unwrap();
        let id = define("t", "First", "ARRAY['b', 'a']");
        let fields: Vec<String> = one(&format!(
            "SELECT fields FROM outbound_msg.message WHERE id = {id}"
        ));
        assert_eq!(fields, vec!["a", "b"]);
        assert_eq!(triggers("t"), 1);
        define("t", "Second", "ARRAY['a']");
        assert_eq!(triggers("t"), 1);
        assert_eq!(one::<i64>("SELECT count(*) FROM outbound_msg.messages"), 2);
    }

    #[pg_test]
    fn drop_message_removes_the_trigger_with_the_last_message() {
        Spi::run("CREATE TABLE d (id int PRIMARY KEY, a text)").unwrap();
        define("d", "One", "ARRAY['a']");
        define("d", "Two", "ARRAY['a']");
        Spi::run("SELECT outbound_msg.drop_message('d', 'One')").unwrap();
        assert_eq!(triggers("d"), 1);
        Spi::run("SELECT outbound_msg.drop_message('d', 'Two')").unwrap();
        assert_eq!(triggers("d"), 0);
        assert_eq!(one::<i64>("SELECT count(*) FROM outbound_msg.message"), 0);
    }

    #[pg_test]
    fn alter_message_changes_only_the_given_settings() {
        Spi::run("CREATE TABLE a (id int PRIMARY KEY, x text, y int)").unwrap();
        define("a", "Alter_me", "ARRAY['x']");
        Spi::run(
            "SELECT outbound_msg.alter_message('a', 'Alter_me', description => 'about', \
             fields => ARRAY['y', 'x'], criteria => 'y > 1', active => false)",
        )
        .unwrap();
        let (fields, criteria) = Spi::get_two::<Vec<String>, String>(
            "SELECT fields, criteria FROM outbound_msg.message WHERE unique_name = 'Alter_me'",
        )
        .unwrap();
        assert_eq!(fields.unwrap(), vec!["x", "y"]);
        assert_eq!(criteria.unwrap(), "(y > 1)");
        assert!(!one::<bool>("SELECT active FROM outbound_msg.message"));
        assert_eq!(
            one::<String>("SELECT name FROM outbound_msg.message"),
            "Demo"
        );
        Spi::run("SELECT outbound_msg.alter_message('a', 'Alter_me', criteria => '')").unwrap();
        assert!(one::<bool>(
            "SELECT criteria IS NULL FROM outbound_msg.message"
        ));
    }

    #[pg_test]
    fn wsdl_types_every_field() {
        Spi::run(
            "CREATE TABLE w (id int PRIMARY KEY, b bool, i int, l bigint, n numeric, f float8,
                             d date, ts timestamptz, raw bytea, t text)",
        )
        .unwrap();
        define(
            "w",
            "W",
            "ARRAY['t', 'b', 'i', 'l', 'n', 'f', 'd', 'ts', 'raw']",
        );
        let wsdl: String = one("SELECT outbound_msg.wsdl('w', 'W')");
        for (name, xsd) in [
            ("b", "xsd:boolean"),
            ("d", "xsd:date"),
            ("f", "xsd:double"),
            ("i", "xsd:int"),
            ("l", "xsd:long"),
            ("n", "xsd:decimal"),
            ("raw", "xsd:base64Binary"),
            ("t", "xsd:string"),
            ("ts", "xsd:dateTime"),
        ] {
            let element = format!(
                "<element name=\"{name}\" type=\"{xsd}\" nillable=\"true\" minOccurs=\"0\"/>"
            );
            assert!(wsdl.contains(&element), "{element}");
        }
        assert!(wsdl.contains("<soap:address location=\"http://127.0.0.1:9/x\"/>"));
    }
}
