//! One delivery round: claim due notifications in a short transaction, send them over HTTP
//! outside any transaction, record the outcomes in a second short transaction.

use std::time::Duration;

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;

use crate::guc;
use crate::http::{Client, Limits};
use crate::ids::{salesforce_id, ACTION_PREFIX, NOTIFICATION_PREFIX, ORGANIZATION_PREFIX};
use crate::queue::{self, Batch};
use crate::soap::{self, Header, Notification};

/// Batches claimed per round; they are sent one after another.
const BATCHES_PER_ROUND: usize = 4;
/// Time after which a failed notification is tried again.
const RETRY_DELAY: Duration = Duration::from_secs(10);
/// Largest listener response read.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// Delivers the queue of the worker's database; keeps its HTTP connections between rounds.
pub struct Deliverer {
    client: Client,
    limits: Limits,
    organization_id: Option<String>,
}

impl Deliverer {
    pub fn new() -> Deliverer {
        let limits = current_limits();
        Deliverer {
            client: Client::new(limits.clone()),
            limits,
            organization_id: None,
        }
    }

    /// Delivers rounds until nothing is due or the worker is asked to stop.
    pub fn deliver_due(&mut self) {
        loop {
            let limits = current_limits();
            if limits != self.limits {
                self.client = Client::new(limits.clone());
                self.limits = limits;
            }
            let batch_size = guc::batch_size();
            let limit = batch_size * BATCHES_PER_ROUND;
            // Sends are sequential: the lease covers every batch of the round timing out.
            let lease = self.limits.timeout * BATCHES_PER_ROUND as u32 + Duration::from_secs(30);
            let known_organization = self.organization_id.clone();
            let claimed = BackgroundWorker::transaction(move || {
                if !extension_installed() {
                    return None;
                }
                let organization_id = known_organization.unwrap_or_else(organization_id);
                match queue::claim(limit, batch_size, lease) {
                    Ok(batches) => Some((organization_id, batches)),
                    Err(err) => {
                        warning!(
                            "outbound_msg: could not claim notifications: {}",
                            err.message
                        );
                        None
                    }
                }
            });
            let Some((organization_id, batches)) = claimed else {
                return;
            };
            let claimed_count: usize = batches.iter().map(|b| b.notifications.len()).sum();
            let header_values = HeaderValues {
                organization_id: organization_id.clone(),
                enterprise_url: guc::enterprise_url(),
                partner_url: guc::partner_url(),
            };
            self.organization_id = Some(organization_id);

            let outcomes: Vec<(Vec<i64>, Result<(), String>)> = batches
                .iter()
                .map(|batch| (batch.ids(), self.send(&header_values, batch)))
                .collect();
            if !outcomes.is_empty() {
                BackgroundWorker::transaction(move || record(&outcomes));
            }
            if claimed_count < limit || BackgroundWorker::sigterm_received() {
                return;
            }
        }
    }

    /// Sends one batch as one SOAP message.
    fn send(&self, values: &HeaderValues, batch: &Batch) -> Result<(), String> {
        let action_id = salesforce_id(ACTION_PREFIX, batch.message_id as u64);
        let header = Header {
            organization_id: &values.organization_id,
            action_id: &action_id,
            enterprise_url: &values.enterprise_url,
            partner_url: &values.partner_url,
        };
        let ids: Vec<String> = batch
            .notifications
            .iter()
            .map(|(id, _)| salesforce_id(NOTIFICATION_PREFIX, *id as u64))
            .collect();
        let notifications: Vec<Notification> = ids
            .iter()
            .zip(&batch.notifications)
            .map(|(id, (_, fields_xml))| Notification { id, fields_xml })
            .collect();
        let body = soap::write_envelope(&header, &batch.object_type, &notifications);
        self.client.deliver(&batch.endpoint_url, &body)
    }
}

/// Header values that are the same for every message of a round.
struct HeaderValues {
    organization_id: String,
    enterprise_url: String,
    partner_url: String,
}

fn current_limits() -> Limits {
    Limits {
        timeout: guc::timeout(),
        max_response_bytes: MAX_RESPONSE_BYTES,
    }
}

/// Records every outcome of a round.
fn record(outcomes: &[(Vec<i64>, Result<(), String>)]) {
    for (ids, outcome) in outcomes {
        let recorded = match outcome {
            Ok(()) => queue::acknowledge(ids),
            Err(reason) => queue::record_failure(ids, reason, RETRY_DELAY),
        };
        if let Err(err) = recorded {
            warning!(
                "outbound_msg: could not record a delivery outcome: {}",
                err.message
            );
        }
    }
}

/// Whether `CREATE EXTENSION outbound_msg` has run in this database.
fn extension_installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'outbound_msg')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// The cluster's OrganizationId, derived from its system identifier: stable for the cluster's
/// life and shared by its physical replicas.
fn organization_id() -> String {
    let system_identifier =
        Spi::get_one::<i64>("SELECT system_identifier FROM pg_control_system()")
            .ok()
            .flatten()
            .unwrap_or(0);
    salesforce_id(ORGANIZATION_PREFIX, system_identifier as u64)
}
