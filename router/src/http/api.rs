//! The JSON API's routes and handlers. Each handler turns the call into the protocol request the
//! TCP side answers (so both behave the same) and the answer into JSON.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{delete, get, patch, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use shardq_protocol::{BrokerStatus, Request, Response, Service};
use tokio::time::Instant;

use super::{ApiError, App, Route};
use crate::Shared;

/// Answers `request` as the TCP side would.
async fn ask(shared: &Arc<Shared>, request: Request) -> Result<Response, ApiError> {
    Ok(shared.call(request).await?)
}

/// A protocol answer as JSON: the payload of a one-field answer (`Brokers([..])` -> `[..]`),
/// the fields of a struct answer, `{"ok": true}` for a bare acknowledgement.
fn payload(r: Response) -> Value {
    match serde_json::to_value(&r) {
        Ok(Value::Object(m)) if m.len() == 1 => {
            let (_, v) = m.into_iter().next().expect("one field");
            v
        }
        Ok(Value::String(_)) => json!({ "ok": true }),
        Ok(v) => v,
        Err(e) => json!({ "error": format!("cannot encode the answer: {e}") }),
    }
}

type Answer = Result<Json<Value>, ApiError>;

async fn cluster(State(s): State<App>) -> Answer {
    Ok(Json(payload(ask(&s, Request::Status).await?)))
}

async fn brokers(State(s): State<App>) -> Answer {
    Ok(Json(payload(ask(&s, Request::ListBrokers).await?)))
}

async fn topics(State(s): State<App>) -> Answer {
    Ok(Json(payload(ask(&s, Request::ListTopics).await?)))
}

async fn topic(State(s): State<App>, name: Result<Path<String>, PathRejection>) -> Answer {
    let Path(name) = name.map_err(|e| bad("topic name", e.body_text()))?;
    Ok(Json(payload(
        ask(&s, Request::DescribeTopic { name }).await?,
    )))
}

async fn moves(State(s): State<App>) -> Answer {
    match ask(&s, Request::Status).await? {
        Response::Status(st) => Ok(Json(serde_json::to_value(st.moves).unwrap_or_default())),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> ApiError {
    ApiError::status(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("unexpected answer {}", r.name()),
    )
}

/// `POST /api/topics` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTopic {
    name: String,
    partitions: u32,
    replication_factor: Option<u32>,
    min_insync_replicas: Option<u32>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
}

async fn create_topic(
    State(s): State<App>,
    body: Result<Json<NewTopic>, JsonRejection>,
) -> Result<HttpResponse, ApiError> {
    let Json(t) = body.map_err(|e| bad("topic", e.body_text()))?;
    let created = ask(
        &s,
        Request::CreateTopic {
            name: t.name,
            partitions: t.partitions,
            replication_factor: t.replication_factor,
            min_insync: t.min_insync_replicas,
            retention: shardq_protocol::Retention {
                ms: t.retention_ms,
                bytes: t.retention_bytes,
            },
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(payload(created))).into_response())
}

async fn delete_topic(State(s): State<App>, name: Result<Path<String>, PathRejection>) -> Answer {
    let Path(name) = name.map_err(|e| bad("topic name", e.body_text()))?;
    Ok(Json(payload(ask(&s, Request::DeleteTopic { name }).await?)))
}

/// `PATCH /api/topics/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlterTopic {
    partitions: Option<u32>,
    /// Absent: unchanged; `null`: no limit; a number: the new limit.
    #[serde(default, deserialize_with = "present")]
    retention_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    retention_bytes: Option<Option<u64>>,
}

/// A field that is present (`null` included), as opposed to absent.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

async fn alter_topic(
    State(s): State<App>,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<AlterTopic>, JsonRejection>,
) -> Answer {
    let Path(name) = name.map_err(|e| bad("topic name", e.body_text()))?;
    let Json(t) = body.map_err(|e| bad("body", e.body_text()))?;
    let request = Request::AlterTopic {
        name,
        partitions: t.partitions,
        retention_ms: t.retention_ms,
        retention_bytes: t.retention_bytes,
    };
    Ok(Json(payload(ask(&s, request).await?)))
}

async fn purge_topic(State(s): State<App>, name: Result<Path<String>, PathRejection>) -> Answer {
    let Path(name) = name.map_err(|e| bad("topic name", e.body_text()))?;
    Ok(Json(payload(ask(&s, Request::PurgeTopic { name }).await?)))
}

/// Asks the `shardq up` that started this router for one more broker.
async fn add_broker(State(s): State<App>) -> Result<HttpResponse, ApiError> {
    let Some(data) = s.config.up_data.clone() else {
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            "this router was not started by `shardq up`, so it cannot start brokers: start one \
             yourself (`shardq broker --id N --router ADDR ...`); it joins when it registers"
                .into(),
        ));
    };
    let (id, addr) = crate::up_control::request_broker(&data)
        .await
        .map_err(|e| ApiError::status(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "addr": addr }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    /// Discard the broker's data (it must be down) instead of draining it.
    #[serde(default)]
    force: bool,
}

async fn remove(s: &Arc<Shared>, id: u32, force: bool) -> Answer {
    let request = if force {
        Request::RemoveBroker { id, force: true }
    } else {
        Request::LeaveBroker { id }
    };
    Ok(Json(payload(ask(s, request).await?)))
}

async fn remove_broker(
    State(s): State<App>,
    id: Result<Path<u32>, PathRejection>,
    q: Result<Query<RemoveQuery>, QueryRejection>,
) -> Answer {
    let Path(id) = id.map_err(|e| bad("broker id", e.body_text()))?;
    let Query(q) = q.map_err(|e| bad("query", e.body_text()))?;
    remove(&s, id, q.force).await
}

fn bad(what: &str, why: String) -> ApiError {
    ApiError::status(StatusCode::BAD_REQUEST, format!("bad {what}: {why}"))
}

/// The seed's `/rm?id=N`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RmQuery {
    id: u32,
    #[serde(default)]
    force: bool,
}

async fn rm(State(s): State<App>, q: Result<Query<RmQuery>, QueryRejection>) -> Answer {
    let Query(q) = q.map_err(|e| bad("query (`/rm?id=N`)", e.body_text()))?;
    remove(&s, q.id, q.force).await
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the router serves, and at least one broker is up to take its shards.
async fn readyz(State(s): State<App>) -> HttpResponse {
    let brokers = s.state().brokers(Instant::now());
    let up = brokers
        .iter()
        .filter(|b| b.status != BrokerStatus::Down)
        .count();
    let body = json!({ "ready": up > 0, "brokers": brokers.len(), "brokers_up": up });
    let status = if up > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The seed's `/heartbeat`: the router is alive, at this routing epoch.
async fn heartbeat(State(s): State<App>) -> Json<Value> {
    Json(json!({ "status": "ok", "epoch": s.state().epoch }))
}

fn route(
    method: Method,
    path: &'static str,
    summary: &'static str,
    handler: axum::routing::MethodRouter<App>,
) -> Route {
    Route {
        mutating: method != Method::GET,
        method,
        path,
        summary,
        alias_of: None,
        body: None,
        query: &[],
        produces: "application/json",
        handler,
    }
}

fn alias(r: Route, of: &'static str) -> Route {
    Route {
        alias_of: Some(of),
        ..r
    }
}

pub(super) fn routes() -> Vec<Route> {
    let new_topic = json!({
        "type": "object",
        "required": ["name", "partitions"],
        "properties": {
            "name": { "type": "string" },
            "partitions": { "type": "integer", "minimum": 1 },
            "replication_factor": { "type": "integer", "minimum": 1, "maximum": 5,
                "description": "default: the router's --default-replication-factor, capped at the brokers up" },
            "min_insync_replicas": { "type": "integer", "minimum": 1,
                "description": "default: a majority of the replication factor" },
            "retention_ms": { "type": "integer", "minimum": 1,
                "description": "delete stored batches whose newest record is older (default: keep forever)" },
            "retention_bytes": { "type": "integer", "minimum": 1,
                "description": "keep at most about this many bytes in the topic, an equal share per partition (default: no limit)" }
        },
        "additionalProperties": false
    });
    const FORCE: &[(&str, &str)] = &[(
        "force",
        "true: discard the data of a broker that is down instead of draining it",
    )];
    const RM: &[(&str, &str)] = &[
        ("id", "the broker to remove"),
        (
            "force",
            "true: discard the data of a broker that is down instead of draining it",
        ),
    ];
    vec![
        route(Method::GET, "/healthz", "The router process serves", get(healthz)),
        route(
            Method::GET,
            "/readyz",
            "The router serves and at least one broker is up (503 otherwise)",
            get(readyz),
        ),
        route(
            Method::GET,
            "/api/cluster",
            "Everything at once: epoch, brokers, topics, shards with their replicas, moves",
            get(cluster),
        ),
        route(Method::GET, "/api/brokers", "The brokers, their state and shards", get(brokers)),
        route(
            Method::POST,
            "/api/brokers",
            "Start one more broker (a cluster run by `shardq up` only); shards move to it",
            post(add_broker),
        ),
        Route {
            query: FORCE,
            ..route(
                Method::DELETE,
                "/api/brokers/{id}",
                "Remove a broker: drain its shards to the others, then it leaves (`?force=true`: discard a down broker's data)",
                delete(remove_broker),
            )
        },
        route(Method::GET, "/api/topics", "The topics", get(topics)),
        Route {
            body: Some(new_topic),
            ..route(Method::POST, "/api/topics", "Create a topic", post(create_topic))
        },
        route(
            Method::GET,
            "/api/topics/{name}",
            "One topic and where its shards live",
            get(topic),
        ),
        Route {
            body: Some(json!({
                "type": "object",
                "properties": {
                    "partitions": { "type": "integer", "minimum": 1,
                        "description": "the new count: at least the current one (topics only grow)" },
                    "retention_ms": { "type": "integer", "nullable": true, "minimum": 1,
                        "description": "the new age limit; null: keep forever" },
                    "retention_bytes": { "type": "integer", "nullable": true, "minimum": 1,
                        "description": "the new size limit; null: no limit" }
                },
                "additionalProperties": false
            })),
            ..route(
                Method::PATCH,
                "/api/topics/{name}",
                "Grow a topic to more partitions and/or change its retention",
                patch(alter_topic),
            )
        },
        route(
            Method::POST,
            "/api/topics/{name}/purge",
            "Delete every committed record of a topic (offsets are never reused)",
            post(purge_topic),
        ),
        route(
            Method::DELETE,
            "/api/topics/{name}",
            "Delete a topic and its records on every replica (a down broker deletes its copy when back; the name is reusable once every copy is gone)",
            delete(delete_topic),
        ),
        route(Method::GET, "/api/moves", "Shard moves, in flight and finished", get(moves)),
        alias(
            route(Method::GET, "/rep", "The brokers (the seed's replica list)", get(brokers)),
            "/api/brokers",
        ),
        alias(
            route(Method::POST, "/add", "Start one more broker", post(add_broker)),
            "/api/brokers",
        ),
        alias(
            Route {
                query: RM,
                ..route(Method::POST, "/rm", "Remove a broker: `/rm?id=N`", post(rm))
            },
            "/api/brokers/{id}",
        ),
        Route {
            mutating: false,
            ..alias(
                route(Method::GET, "/heartbeat", "The router is alive", get(heartbeat)),
                "/healthz",
            )
        },
        alias(
            route(Method::GET, "/home", "The cluster overview", get(cluster)),
            "/api/cluster",
        ),
    ]
}
