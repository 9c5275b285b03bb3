//! The OpenAPI 3.0 document, generated from the route list the server is built from.

use serde_json::{json, Map, Value};

use super::Route;

/// The path parameters of an axum/OpenAPI path (`/api/brokers/{id}` -> `id`).
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
}

fn operation(r: &Route) -> Value {
    let mut params: Vec<Value> = path_params(r.path)
        .map(|name| {
            let ty = if name == "id" { "integer" } else { "string" };
            json!({ "name": name, "in": "path", "required": true, "schema": { "type": ty } })
        })
        .collect();
    for (name, description) in r.query {
        let ty = if *name == "id" { "integer" } else { "boolean" };
        params.push(json!({
            "name": name, "in": "query", "required": *name == "id",
            "description": description, "schema": { "type": ty }
        }));
    }
    let ok = if r.method == axum::http::Method::POST && r.path.starts_with("/api/") {
        "201"
    } else {
        "200"
    };
    let schema = if r.produces == "application/json" {
        json!({})
    } else {
        json!({ "type": "string" })
    };
    let mut content = Map::new();
    content.insert(r.produces.into(), json!({ "schema": schema }));
    let error = json!({ "description": "an error: `{\"error\": message, \"kind\": detail}`",
        "content": { "application/json": { "schema": { "type": "object",
            "properties": { "error": { "type": "string" }, "kind": {} } } } } });
    let mut responses = Map::new();
    responses.insert(
        ok.into(),
        json!({ "description": "success", "content": content }),
    );
    responses.insert("default".into(), error);
    let mut description = String::new();
    if let Some(of) = r.alias_of {
        description = format!("The seed's name for `{of}`.");
    }
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{}{}", r.method.as_str().to_lowercase(), r.path.replace(['/', '{', '}', '.'], "_")),
        "responses": responses,
    });
    if !description.is_empty() {
        op["description"] = description.into();
    }
    if !params.is_empty() {
        op["parameters"] = params.into();
    }
    if let Some(body) = &r.body {
        op["requestBody"] = json!({ "required": true,
            "content": { "application/json": { "schema": body } } });
    }
    if r.mutating {
        op["security"] = json!([{ "bearer": [] }]);
    }
    op
}

/// The document for `routes`.
pub(super) fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_lowercase()] = operation(r);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "shardq router",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Admin API of a shardq cluster's router. Calls that change the cluster need the cluster secret as a bearer token."
        },
        "paths": paths,
        "components": { "securitySchemes": { "bearer": {
            "type": "http", "scheme": "bearer",
            "description": "The first line of the cluster's token file (`shardq up` writes DATA/cluster.token)"
        } } }
    })
}
