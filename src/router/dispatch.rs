//! Request dispatch: what each request does, in one place. The router
//! actor runs [`request`] for every client request; on a cluster,
//! [`route`](super::route) runs [`data`] and [`admin`] where the request
//! belongs (here, or for a request forwarded to this node).

use std::sync::Arc;
use std::time::Instant;

use crate::cluster::Cluster;
use crate::db::Database;
use crate::monitor::{Operation, Outcome, Who};
use crate::proto::wire::{KeyInfo, KeyKind, Request, Response};
use crate::proto::{Error, OperationType};
use crate::Session;

fn denied(reason: impl Into<String>) -> Error {
    Error::PermissionDenied {
        reason: reason.into(),
    }
}

/// Serves one request of an authenticated principal: an admin request
/// on this node or (on a cluster) where group 0 leads; a tenant's data
/// request in the key's tenant, on this node's replica or forwarded to
/// the shard leader. `cluster`: the node's cluster runtime (None on a
/// standalone node); `grants`: its share of tenants' budgets. `session`: the connection's session (standalone
/// nodes bind one at authentication).
pub async fn request(
    db: &Database,
    cluster: Option<&Arc<Cluster>>,
    shared: &super::Shared,
    key_id: &str,
    session: Option<Session>,
    req: Request,
) -> super::Answer {
    let started = Instant::now();
    let op = Operation::of(&req);
    let mut caller = Caller::Unknown;
    let result = request_in(db, cluster, shared, key_id, session, req, &mut caller).await;
    let who = match &caller {
        Caller::Tenant(t) => Who::Tenant(t),
        Caller::Admin => Who::Admin,
        Caller::Unknown => Who::Unknown,
    };
    let (outcome, took) = (Outcome::of(&result), started.elapsed());
    shared.metrics.record(who, op, outcome, took);
    if let Caller::Tenant(t) = &caller {
        let now = crate::util::coarse_now_ms();
        db.recorder()
            .request(t, now, outcome, took, db.in_flight_of(t));
        if let Err(e) = &result {
            if let Some(l) = e.limit() {
                db.events().rejected(t, l.kind);
            }
        }
    }
    let leader = match (cluster, caller) {
        (Some(c), Caller::Tenant(t)) => super::route::leader_hint(db, c, &t),
        _ => None,
    };
    super::Answer { result, leader }
}

/// Whose request it was, once the key is checked.
enum Caller {
    /// Not known (ping, or the key was refused).
    Unknown,
    /// An admin key.
    Admin,
    /// A tenant key of this tenant.
    Tenant(String),
}

/// [`request`], noting in `caller` whose request it is (for a tenant:
/// which tenant's shard served it).
async fn request_in(
    db: &Database,
    cluster: Option<&Arc<Cluster>>,
    shared: &super::Shared,
    key_id: &str,
    session: Option<Session>,
    req: Request,
    caller: &mut Caller,
) -> Result<Response, Error> {
    if let Request::Ping = req {
        return Ok(Response::Pong);
    }
    if let Some(c) = cluster {
        c.check_serving()?;
        c.check_fresh()?;
    }
    if let Request::Authenticate { .. } = req {
        return Err(Error::invalid(
            "request",
            "Authenticate is served before dispatch",
        ));
    }
    // Re-checked on every request: a revoked key fails on its next one.
    let key = db.key_still_valid(key_id)?;
    *caller = match (&key.kind, &key.tenant_id) {
        (KeyKind::Admin, _) => Caller::Admin,
        (KeyKind::Tenant, Some(t)) => Caller::Tenant(t.clone()),
        (KeyKind::Tenant, None) => Caller::Unknown,
    };
    if let Request::WhoAmI = req {
        return Ok(Response::Principal(key));
    }
    match (key.kind, cluster) {
        (KeyKind::Admin, Some(c)) => {
            super::route::serve_admin(db, c, &shared.mover, Some(key_id), req, 0).await
        }
        (KeyKind::Admin, None) => admin(db, req, Some(key_id)).await,
        (KeyKind::Tenant, cluster) => {
            operation_allowed(&key, &req)?;
            if let Some(c) = cluster {
                let (Some(t), Some(u)) = (&key.tenant_id, &key.user_id) else {
                    return Err(Error::MissingTenantContext);
                };
                return super::route::serve_tenant(db, c, &shared.grants, key_id, t, u, req, 0)
                    .await;
            }
            let s = session.ok_or(Error::MissingTenantContext)?;
            data(&s, req).await
        }
    }
}

/// Whether a tenant key may run `req`'s operation.
fn operation_allowed(key: &KeyInfo, req: &Request) -> Result<(), Error> {
    if let (Some(op), Some(allowed)) = (req.operation(), &key.operations) {
        if !allowed.contains(&op) {
            return Err(denied(format!(
                "this key may not run {op} operations (allowed: {allowed:?})"
            )));
        }
    }
    Ok(())
}

/// Whether `key` (checked again on the node serving a forwarded request)
/// may run `req` as `user` of `tenant`: a tenant key of that tenant and
/// user, allowing the operation. An admin key reaches no tenant's data.
pub(crate) fn key_reaches(
    key: &KeyInfo,
    tenant: &str,
    user: &str,
    req: &Request,
) -> Result<(), Error> {
    match (&key.kind, key.tenant_id.as_deref(), key.user_id.as_deref()) {
        (KeyKind::Tenant, Some(t), Some(u)) if t == tenant && u == user => {}
        (KeyKind::Tenant, Some(t), _) if t != tenant => {
            return Err(Error::CrossTenantAccess {
                session_tenant: t.to_string(),
                target_tenant: tenant.to_string(),
            })
        }
        _ => {
            return Err(denied(format!(
                "key {} does not belong to user {user} of tenant {tenant}",
                key.key_id
            )))
        }
    }
    operation_allowed(key, req)
}

/// Runs an admin request of the admin key `key_id` on this node (the key
/// is named in the audit log of the tenant changes it makes).
pub async fn admin(db: &Database, req: Request, key_id: Option<&str>) -> Result<Response, Error> {
    use Request::*;
    let actor = match key_id {
        Some(k) => crate::proto::ChangedBy::Key(k.to_string()),
        None => crate::proto::ChangedBy::System,
    };
    Ok(match req {
        CreateTenant(cfg) => Response::Tenant(db.create_tenant_as(cfg, &actor).await?),
        CreateTenantForTier {
            tenant_id,
            name,
            tier,
        } => {
            let cfg = crate::TenantConfig::for_tier(
                &db.tiers(),
                &tenant_id,
                &name,
                &tier,
                serde_json::json!({}),
            )?;
            Response::Tenant(db.create_tenant_as(cfg, &actor).await?)
        }
        GetTenant(id) => Response::Tenant(db.get_tenant(&id).await?),
        UpdateTenant(id, up) => Response::Tenant(db.update_tenant_as(&id, up, &actor).await?),
        DeleteTenant(id) => {
            db.delete_tenant_as(&id, &actor).await?;
            Response::Ok
        }
        Analytics {
            tenant_id,
            from_ms,
            to_ms,
        } => Response::Analytics(Box::new(db.analytics(&tenant_id, from_ms, to_ms).await?)),
        Audit { tenant_id, limit } => {
            Response::Audit(db.audit_log(tenant_id.as_deref(), limit as usize)?)
        }
        ListTenants => Response::Tenants(db.list_tenants().await?),
        Usage(Some(id)) => Response::Usage(Box::new(db.usage(&id).await?)),
        Usage(None) => Response::UsageReport(db.usage_report().await?),
        PurgeOlderThan {
            tenant_id,
            collection,
            cutoff_ms,
        } => Response::Purged {
            removed: db
                .purge_older_than(&tenant_id, collection.as_deref(), cutoff_ms)
                .await?,
        },
        CreateUser(t, u) => {
            db.create_user(&t, &u).await?;
            Response::Ok
        }
        RemoveUser(t, u) => {
            db.remove_user(&t, &u).await?;
            Response::Ok
        }
        ListUsers(t) => Response::Users(db.list_users(&t).await?),
        CreateKey {
            kind,
            tenant_id,
            user_id,
            operations,
        } => {
            let (api_key, info) = db
                .create_key(kind, tenant_id.as_deref(), user_id.as_deref(), operations)
                .await?;
            Response::NewKey { api_key, info }
        }
        RevokeKey(id) => {
            db.revoke_key(&id).await?;
            Response::Ok
        }
        RotateKey(id) => {
            let (api_key, info) = db.rotate_key(&id).await?;
            Response::NewKey { api_key, info }
        }
        ListKeys(t) => Response::Keys(db.list_keys(t.as_deref())),
        ExportOpen(open) => Response::ExportOpened(Box::new(db.export_open(open).await?)),
        ExportPage(page) => Response::ExportPage(db.export_page(page).await?),
        ExportClose { tenant_id, cursor } => {
            db.export_close(&tenant_id, cursor)?;
            Response::Ok
        }
        Import(step) => Response::Batch(db.import(step).await?),
        ClusterNodes
        | RemoveNode { .. }
        | ShardInfo(_)
        | MoveTenant { .. }
        | ListJobs
        | GetJob(_)
        | CancelJob(_)
        | Rebalance { .. }
        | DrainNode(_) => {
            return Err(Error::invalid(
                "request",
                "this node is not part of a cluster",
            ))
        }
        other => {
            return Err(denied(format!(
                "an admin key reaches no tenant's data ({})",
                request_name(&other)
            )))
        }
    })
}

/// Runs a tenant's data request on this node's replica.
pub async fn data(s: &Session, req: Request) -> Result<Response, Error> {
    use Request::*;
    if let Stale(inner) = req {
        if matches!(*inner, Stale(_)) {
            return Err(Error::invalid("request", "Stale cannot wrap Stale"));
        }
        let stale = s.clone().with_consistency(crate::shard::Consistency::Stale);
        return Box::pin(data(&stale, *inner)).await;
    }
    if let Once {
        client,
        seq,
        acked_below,
        request,
    } = req
    {
        if request.operation() != Some(OperationType::Write)
            || matches!(*request, Once { .. } | Stale(_))
        {
            return Err(Error::invalid("request", "Once wraps one write request"));
        }
        let once = s.clone().with_once(crate::db::OnceTag {
            client,
            seq,
            acked_below,
        });
        return Box::pin(data(&once, *request)).await;
    }
    Ok(match req {
        CreateCollection(spec) => {
            s.create_collection(spec).await?;
            Response::Ok
        }
        DropCollection(name) => {
            s.drop_collection(&name).await?;
            Response::Ok
        }
        IndexProperty {
            collection,
            property,
        } => Response::Indexed {
            objects_read: s.index_property(&collection, &property).await?,
        },
        ListCollections => Response::Collections(s.collections().await?),
        ListIndexes { collection } => Response::Indexes(s.indexes(collection.as_deref()).await?),
        DropIndex {
            collection,
            property,
        } => Response::IndexDropped {
            keys_removed: s.drop_index(&collection, &property).await?,
        },
        Put(obj) => Response::Write(s.put(obj).await?),
        Update {
            id,
            properties_json,
            vector,
        } => {
            let props: serde_json::Value = serde_json::from_str(&properties_json)
                .map_err(|e| Error::invalid("properties", e.to_string()))?;
            Response::Write(s.update(&id, props, vector).await?)
        }
        Delete(id) => Response::Write(s.delete(&id).await?),
        Transaction(ops) => Response::Write(s.transaction(ops).await?),
        Batch(ops) => {
            if ops.len() > crate::db::MAX_TRANSACTION_OPS {
                return Err(Error::invalid(
                    "ops",
                    format!("at most {} ops per request", crate::db::MAX_TRANSACTION_OPS),
                ));
            }
            Response::Batch(s.batch(ops).await)
        }
        Get(id) => Response::Object(s.get(&id).await?),
        Query(q) => Response::Objects(s.query(q).await?),
        Search {
            search,
            with_objects,
        } => Response::Hits(if with_objects {
            s.vector_search(search).await?
        } else {
            s.vector_search_ids(search).await?
        }),
        SearchBatch {
            searches,
            with_objects,
        } => Response::HitLists(s.vector_search_batch(searches, with_objects).await?),
        Traverse(t) => Response::Nodes(s.traverse(t).await?),
        Usage(None) => Response::Usage(Box::new(s.leader_usage().await?)),
        Usage(Some(t)) => {
            s.check_tenant(&t)?;
            Response::Usage(Box::new(s.leader_usage().await?))
        }
        CanPerform(op) => {
            s.can_perform_operation(op)?;
            Response::Ok
        }
        Scan {
            collection,
            after,
            limit,
        } => Response::Objects(s.scan(&collection, after.as_deref(), limit).await?),
        other => {
            return Err(denied(format!(
                "{} needs an admin key",
                request_name(&other)
            )))
        }
    })
}

fn request_name(r: &Request) -> String {
    let dbg = format!("{r:?}");
    dbg.split(['(', ' ', '{'])
        .next()
        .unwrap_or("request")
        .to_string()
}
