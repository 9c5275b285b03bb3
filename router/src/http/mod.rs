//! The router's HTTP side (`--http ADDR`): a JSON admin API over the same handlers as the TCP
//! protocol, the seed's route names as aliases, health checks, Prometheus metrics and the
//! OpenAPI document describing all of it.
//!
//! Every route is declared once, in [`routes`]: the axum router and the OpenAPI document are
//! both built from that list, so the document cannot name a route the server lacks or miss
//! one it serves. Calls that change the cluster need the cluster secret as a bearer token
//! (`Authorization: Bearer <the hex line of cluster.token>`), unless the router runs without a
//! secret (`--insecure-no-auth`).

mod api;
mod live;
mod metrics;
mod openapi;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Json;
use serde_json::json;
use shardq_protocol::CancellationToken;
use shardq_protocol::ErrorKind;
use tokio::net::TcpListener;

pub(crate) use metrics::RouterMetrics;

use crate::Shared;

type App = Arc<Shared>;

/// One route: how it is called, what it does (for the OpenAPI document) and its handler.
pub(crate) struct Route {
    pub method: Method,
    /// axum's path syntax (`/api/topics/{name}`), which is also OpenAPI's.
    pub path: &'static str,
    pub summary: &'static str,
    /// Changes the cluster: needs the bearer token.
    pub mutating: bool,
    /// The seed's name for another route (documented as such).
    pub alias_of: Option<&'static str>,
    /// The JSON body it takes, as an OpenAPI schema.
    pub body: Option<serde_json::Value>,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// The media type of a successful answer.
    pub produces: &'static str,
    pub handler: MethodRouter<App>,
}

/// The web page, embedded in the binary (it fetches nothing else from anywhere).
const PAGE: &str = include_str!("page.html");

/// Every route the HTTP side serves.
pub(crate) fn routes() -> Vec<Route> {
    let mut r = api::routes();
    let get = |path, summary, produces, handler| Route {
        method: Method::GET,
        path,
        summary,
        mutating: false,
        alias_of: None,
        body: None,
        query: &[],
        produces,
        handler,
    };
    r.push(get(
        "/metrics",
        "Prometheus metrics of the cluster as the router sees it (OpenMetrics on request)",
        "text/plain",
        axum::routing::get(metrics::handler),
    ));
    r.push(get(
        "/api/openapi.json",
        "This API's OpenAPI 3.0 document",
        "application/json",
        axum::routing::get(|| async { Json(openapi::document(&routes())) }),
    ));
    r.push(get(
        "/",
        "The live web page: the ring, shards, brokers and moves",
        "text/html",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    ));
    r.push(get(
        "/api/view",
        "The cluster as the web page draws it: ring tokens, shards at their hashes, brokers, moves",
        "application/json",
        axum::routing::get(live::snapshot),
    ));
    r.push(get(
        "/api/events",
        "Server-sent events: the /api/view snapshot each time it changes",
        "text/event-stream",
        axum::routing::get(live::events),
    ));
    r
}

/// The axum application over `shared`.
pub(crate) fn app(shared: Arc<Shared>) -> axum::Router {
    let mut router = axum::Router::new();
    for route in routes() {
        router = router.route(route.path, route.handler);
    }
    router
        .fallback(|| async {
            ApiError::status(
                StatusCode::NOT_FOUND,
                "no such route; GET /api/openapi.json lists them".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Serves `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(shared))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Refuses mutating calls without the cluster secret, and counts every call by route and
/// status for `/metrics`.
async fn guard(State(shared): State<App>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let matched = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mutating = matched.as_deref().is_some_and(|path| {
        routes()
            .iter()
            .any(|r| r.path == path && r.method == method && r.mutating)
    });
    let response = if mutating {
        match authorize(&shared, request.headers()) {
            Ok(()) => next.run(request).await,
            Err(e) => e.into_response(),
        }
    } else {
        next.run(request).await
    };
    shared.metrics.http_request(
        &method,
        matched.as_deref().unwrap_or("unmatched"),
        response.status(),
    );
    response
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = shared.config.listener.secret.as_ref() else {
        return Ok(());
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if secret.matches_token(t) => Ok(()),
        Some(_) => Err(ApiError::status(
            StatusCode::FORBIDDEN,
            "the bearer token is not this cluster's secret".into(),
        )),
        None => Err(ApiError::status(
            StatusCode::UNAUTHORIZED,
            "this call changes the cluster: send the cluster secret as \
             `Authorization: Bearer <first line of the token file>` (`shardq up` writes \
             DATA/cluster.token)"
                .into(),
        )),
    }
}

/// An error answer: `{"error": "...", "kind": {...}}` with a status that says whose fault it is.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: Option<serde_json::Value>,
}

impl ApiError {
    pub fn status(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            message,
            kind: None,
        }
    }
}

impl From<ErrorKind> for ApiError {
    fn from(e: ErrorKind) -> ApiError {
        use ErrorKind as E;
        let status = match &e {
            E::UnknownTopic { .. } | E::UnknownShard { .. } | E::UnknownBroker { .. } => {
                StatusCode::NOT_FOUND
            }
            E::TopicExists { .. }
            | E::BrokerUp { .. }
            | E::BrokerDown { .. }
            | E::RemovedBroker { .. }
            | E::IdentityConflict { .. }
            | E::WrongCluster { .. } => StatusCode::CONFLICT,
            E::InvalidName { .. }
            | E::BadRequest { .. }
            | E::RecordTooLarge { .. }
            | E::FrameTooLarge { .. }
            | E::Unsupported { .. } => StatusCode::BAD_REQUEST,
            E::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            E::Unavailable { .. }
            | E::ShuttingDown
            | E::NotEnoughReplicas { .. }
            | E::StorageFull { .. }
            | E::TooManyConnections { .. }
            | E::Moving { .. }
            | E::NotOwner { .. }
            | E::LeaderEpochMismatch { .. } => StatusCode::SERVICE_UNAVAILABLE,
            E::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
            kind: serde_json::to_value(&e).ok(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(kind) = self.kind {
            body["kind"] = kind;
        }
        (self.status, Json(body)).into_response()
    }
}
