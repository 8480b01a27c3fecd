//! Applying `POST /v1/domain/changes` inside the writer's transaction: sessions, products and
//! users, with the same idempotency and durability as sample batches.

use std::collections::BTreeSet;

use redb::ReadableTable;
use vitalflow_schemas::domain::{
    DomainChange, DomainChangesRequest, DomainChangesResponse, Product, Session, parse_change,
};
use vitalflow_schemas::wire::RejectedItem;
use vitalflow_schemas::{Change, Epoch};

use crate::error::IngestError;
use crate::store::{PayloadHash, RequestRecord};
use crate::writer::{Tables, prior_response};

/// Requests of the backend have no user; their idempotency scope is this (never a valid user id).
pub(crate) const DOMAIN_SCOPE: &str = "";

pub(crate) fn apply_domain(
    t: &mut Tables<'_>,
    req: &DomainChangesRequest,
    hash: &PayloadHash,
    epoch: Epoch,
    changes: &mut Vec<Change>,
    users: &mut BTreeSet<String>,
) -> Result<(Result<DomainChangesResponse, IngestError>, bool), redb::Error> {
    if let Some(prior) = prior_response::<DomainChangesResponse>(t, DOMAIN_SCOPE, &req.request_id, hash)? {
        return Ok((prior.map(|r| DomainChangesResponse { replayed: true, ..r }), false));
    }
    let mut resp = DomainChangesResponse { request_id: req.request_id.clone(), epoch, ..Default::default() };
    // G6 judges sessions against the moment the writer takes the request.
    let received_at_ms = chrono::Utc::now().timestamp_millis();
    for (index, raw) in req.changes.iter().enumerate() {
        let change = match parse_change(raw, received_at_ms, crate::limits()) {
            Ok(c) => c,
            Err(rej) => {
                resp.rejected.push(RejectedItem { index, code: rej.code, message: rej.message, field: None });
                continue;
            }
        };
        match change {
            DomainChange::UpsertSession(w) => {
                let profile = crate::writer::read_profile(t, w.user_id.as_str())?;
                let new = w.resolve(profile.as_ref());
                let key = (new.user_id.as_str(), new.session_id.as_str());
                let old: Option<Session> = t.sessions.get(key)?.and_then(|v| serde_json::from_slice(v.value()).ok());
                if old.as_ref() == Some(&new) {
                    resp.unchanged += 1;
                    continue;
                }
                if let Some(old) = old {
                    changes.push(Change::Session(old, -1));
                }
                t.sessions.insert(key, serde_json::to_vec(&new).unwrap_or_default().as_slice())?;
                users.insert(new.user_id.clone());
                changes.push(Change::Session(new, 1));
                resp.accepted += 1;
            }
            DomainChange::DeleteSession { user_id, session_id } => {
                let removed = t.sessions.remove((user_id.as_str(), session_id.as_str()))?;
                if let Some(old) = removed.and_then(|v| serde_json::from_slice::<Session>(v.value()).ok()) {
                    changes.push(Change::Session(old, -1));
                    users.insert(user_id);
                    resp.deleted += 1;
                }
            }
            DomainChange::UpsertProduct(new) => {
                let old: Option<Product> =
                    t.products.get(new.product_id.as_str())?.and_then(|v| serde_json::from_slice(v.value()).ok());
                if old.as_ref() == Some(&new) {
                    resp.unchanged += 1;
                    continue;
                }
                if let Some(old) = old {
                    changes.push(Change::Product(old, -1));
                }
                t.products.insert(new.product_id.as_str(), serde_json::to_vec(&new).unwrap_or_default().as_slice())?;
                changes.push(Change::Product(new, 1));
                resp.accepted += 1;
            }
            DomainChange::DeleteProduct { product_id } => {
                let removed = t.products.remove(product_id.as_str())?;
                if let Some(old) = removed.and_then(|v| serde_json::from_slice::<Product>(v.value()).ok()) {
                    changes.push(Change::Product(old, -1));
                    resp.deleted += 1;
                }
            }
            DomainChange::UpsertUser(profile) => {
                if crate::writer::apply_profile(t, &profile, changes)? {
                    users.insert(profile.user_id.clone());
                    resp.accepted += 1;
                } else {
                    resp.unchanged += 1;
                }
            }
        }
    }
    let record = RequestRecord { hash: hash.hex.clone(), scheme: hash.scheme, response: resp.clone() };
    t.record_request(DOMAIN_SCOPE, req.request_id.as_str(), &serde_json::to_vec(&record).unwrap_or_default())?;
    Ok((Ok(resp), true))
}
