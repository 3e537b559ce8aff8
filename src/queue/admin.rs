//! Administration of queued notifications (SPEC §5): `retry` and `discard` one notification,
//! every notification of a message, or every expired one; and `notification_id`, the
//! 18-character Id a listener sees for a queue row.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::define::catalog;
use crate::error::{required, required_message, Error, Kind, Result};
use crate::queue::{self, Selection};
use crate::roles;
use crate::sqltypes::RegClass;
use crate::wire::ids::{number_of, salesforce_id, NOTIFICATION_PREFIX};

/// The notification Id sent to listeners for notification number `number` (see
/// `outbound_msg.queue`: row id * 100 + position).
#[pg_extern(immutable, parallel_safe)]
fn notification_id(number: i64) -> String {
    salesforce_id(NOTIFICATION_PREFIX, number as u64)
}

/// Whether the library was loaded by `shared_preload_libraries`: without it, notifications
/// are captured and queued but no worker delivers them. Read through `worker_status()`.
#[pg_extern]
fn preloaded() -> bool {
    // The shared memory exists only when the library was preloaded.
    crate::deliver::shmem::available()
}

/// Every database a delivery worker serves or that waits for one (shared memory, so every
/// database of the cluster): its OID, the worker's pid, and since when it waits (seconds since
/// the Unix epoch). Read through the `outbound_msg.workers` view.
#[pg_extern]
fn worker_slots() -> TableIterator<
    'static,
    (
        name!(database_oid, pg_sys::Oid),
        name!(pid, Option<i32>),
        name!(waiting_since, Option<f64>),
    ),
> {
    let rows: Vec<_> = crate::deliver::shmem::slots()
        .into_iter()
        .map(|slot| {
            (
                slot.database,
                (slot.pid != 0).then_some(slot.pid),
                slot.waiting_since_ms.map(|ms| ms as f64 / 1000.0),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Asks this database's worker to look at the queue when the current transaction commits.
/// `CREATE EXTENSION` calls it, so a new database is served without a restart.
#[pg_extern]
fn wake_worker() {
    crate::deliver::wake::after_commit();
}

/// Makes one notification (by its 18-character Id) due now, with the group it is sent in;
/// returns how many notifications were rescheduled (0 if in flight).
#[pg_extern(name = "retry")]
fn retry_one(notification_id: Option<&str>) -> std::result::Result<i64, ErrorReport> {
    on_one(notification_id, queue::retry)
}

/// Makes every notification of a message due now, expired ones included; returns how many.
#[pg_extern(name = "retry")]
fn retry_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
) -> std::result::Result<i64, ErrorReport> {
    on_message(object, unique_name, queue::retry)
}

/// Makes every expired notification due again (of protected messages only for a superuser);
/// returns how many.
#[pg_extern]
fn retry_expired() -> std::result::Result<i64, ErrorReport> {
    roles::api_call(|client, caller| queue::retry(client, expired(caller)))
}

/// Deletes one notification (by its 18-character Id) without sending it; returns 1.
#[pg_extern(name = "discard")]
fn discard_one(notification_id: Option<&str>) -> std::result::Result<i64, ErrorReport> {
    on_one(notification_id, queue::discard)
}

/// Deletes every queued or expired notification of a message; returns how many.
#[pg_extern(name = "discard")]
fn discard_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
) -> std::result::Result<i64, ErrorReport> {
    on_message(object, unique_name, queue::discard)
}

/// Deletes every expired notification (of protected messages only for a superuser); returns
/// how many.
#[pg_extern]
fn discard_expired() -> std::result::Result<i64, ErrorReport> {
    roles::api_call(|client, caller| queue::discard(client, expired(caller)))
}

/// What retry and discard do to a selection of notifications.
type Action = fn(&mut SpiClient, Selection) -> Result<i64>;

/// `act` on the notification whose Id is `notification_id`.
fn on_one(notification_id: Option<&str>, act: Action) -> std::result::Result<i64, ErrorReport> {
    let notification_id = required(notification_id, "notification_id")?;
    roles::api_call(|client, caller| {
        let id = existing_notification(client, notification_id, caller)?;
        act(client, Selection::One(id))
    })
}

/// `act` on every notification of the message `unique_name` of `object`.
fn on_message(
    object: Option<RegClass>,
    unique_name: Option<&str>,
    act: Action,
) -> std::result::Result<i64, ErrorReport> {
    let (object, unique_name) = required_message(object, unique_name)?;
    roles::api_call(|client, caller| {
        let message_id = catalog::unprotected_message_id(client, object, unique_name, caller)?;
        act(client, Selection::Message(message_id))
    })
}

/// Every expired notification `caller` may act on: a protected message's only for a superuser.
fn expired(caller: pg_sys::Oid) -> Selection {
    Selection::Expired {
        protected_too: roles::is_superuser(caller),
    }
}

/// The number of a notification Id that is queued, or 22023 / 42704; 42501 when it belongs to
/// a protected message and `caller` is not a superuser.
fn existing_notification(
    client: &SpiClient,
    notification_id: &str,
    caller: pg_sys::Oid,
) -> Result<u64> {
    let number = number_of(NOTIFICATION_PREFIX, notification_id)
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| {
            Error::new(
                Kind::InvalidParameter,
                format!("invalid notification Id \"{notification_id}\""),
            )
            .with_hint("Notification Ids are the 18-character Ids of outbound_msg.delivery_status.")
        })?;
    let Some(message_id) = queue::message_of_notification(client, number)? else {
        return Err(Error::new(
            Kind::UndefinedObject,
            format!("notification \"{notification_id}\" does not exist"),
        )
        .with_detail("It was delivered or discarded."));
    };
    catalog::refuse_if_protected_id(client, message_id, caller)?;
    Ok(number)
}
