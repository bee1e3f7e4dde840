//! The OpenAPI 3.1 document of the control API, served at `GET /v1/openapi.json` to anyone (no
//! token: the contract is not a secret, and a client needs it before it has a token).
//!
//! It is generated, not written: every operation comes from the `#[utoipa::path]` of the handler
//! that [`super::routes`] registers (the same list the router is built from), and every schema
//! from the `ToSchema` derive on the type the handler reads or writes (`handover_core::api` and
//! what it embeds, under core's `openapi` feature). A node with a token marks the calls that need
//! it with the `bearer` security scheme; a node without one serves the document without security
//! requirements, because it checks none. Not here: what the calls do (the handlers' modules).

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::ApiState;

/// The name of the security scheme of the bearer token in the document.
pub const BEARER: &str = "bearer";

/// What the document says before the routes add their operations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "handover control API",
        description = "The control API of a handover node: migration notices and hypervisor \
progress (the migration module), read-only views of VMs, pools, migrations and the fleet, the \
peer API other handover nodes call (the load-balancing module), Prometheus metrics and the \
dashboard with its event stream. Timestamps are milliseconds since the Unix epoch. When the node \
has a token (`[api] token`), every POST and PUT needs `Authorization: Bearer <token>`; reads, \
including this document, never do. Every error is a JSON `ErrorBody` whose `field` names the \
offending part of the request when there is one.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerToken),
    tags(
        (name = "migration", description = "Notices and progress of a VM's migration"),
        (name = "views", description = "What the node knows: VMs, pools, migrations"),
        (name = "fleet", description = "The etcd fleet this node belongs to"),
        (name = "peer", description = "The load-balancing module: what another handover node calls"),
        (name = "operations", description = "Health, metrics and this document"),
        (name = "dashboard", description = "The page for operators and its event stream"),
    )
)]
struct ApiDoc;

/// Adds the `bearer` security scheme.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's `[api] token`, as `Authorization: Bearer <token>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document's info, tags and security scheme, without operations.
pub(super) fn base() -> Document {
    ApiDoc::openapi()
}

/// The whole document, for a node that checks a token (`token_required`) or not.
pub fn document(token_required: bool) -> Value {
    let mut document = super::routes().into_openapi();
    if !token_required {
        for item in document.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                operation.security = None;
            }
        }
    }
    let mut document = serde_json::to_value(document).expect("an OpenAPI document is plain values");
    bound_unsigned_integers(&mut document);
    notice_rules(&mut document);
    document
}

/// Gives every unsigned integer its maximum (unless its field says a lower one, as the deadlines
/// and weights do), and its format the usual spelling (the derive says only `minimum: 0`, and spells `uint64`
/// as `u-int64`, which no reader knows).
fn bound_unsigned_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let bound = match map.get("format").and_then(Value::as_str) {
                Some("u-int64" | "uint64") => Some(("uint64", u64::MAX)),
                Some("u-int32" | "uint32") => Some(("uint32", u32::MAX.into())),
                Some("u-int16" | "uint16") => Some(("uint16", u16::MAX.into())),
                Some("u-int8" | "uint8") => Some(("uint8", u8::MAX.into())),
                _ => None,
            };
            if let Some((format, maximum)) = bound {
                map.insert("format".into(), format.into());
                map.entry("maximum").or_insert_with(|| maximum.into());
            }
            map.values_mut().for_each(bound_unsigned_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_unsigned_integers),
        _ => {}
    }
}

/// The rule of a notice that no derive can say: only `completed` moves a VM to new addresses
/// (the coordinator refuses `new_ip` or `addresses` on any other notice, naming the field).
fn notice_rules(document: &mut Value) {
    if let Some(Value::Object(schema)) = document.pointer_mut("/components/schemas/NoticeRequest") {
        schema.insert(
            "if".into(),
            serde_json::json!({"properties": {"phase": {"not": {"const": "completed"}}}}),
        );
        schema.insert(
            "then".into(),
            serde_json::json!({"properties": {"new_ip": {"type": "null"}, "addresses": {"maxProperties": 0}}}),
        );
    }
}

/// The document as JSON, built once per kind of node.
fn json(token_required: bool) -> &'static str {
    static WITH_TOKEN: LazyLock<String> = LazyLock::new(|| render(true));
    static WITHOUT_TOKEN: LazyLock<String> = LazyLock::new(|| render(false));
    if token_required {
        WITH_TOKEN.as_str()
    } else {
        WITHOUT_TOKEN.as_str()
    }
}

fn render(token_required: bool) -> String {
    serde_json::to_string_pretty(&document(token_required)).expect("a JSON value serializes")
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((
        status = 200,
        description = "The OpenAPI 3.1 document of this node's control API (no token needed)",
        content_type = "application/json",
        body = Object
    ))
)]
pub async fn serve(State(state): State<Arc<ApiState>>) -> Response {
    ([(CONTENT_TYPE, "application/json")], json(state.token.is_some())).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::{Method, Request, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::{Clock, Coordinator};

    fn app(token: Option<&str>) -> axum::Router {
        let config = handover_core::config::parse("").unwrap();
        super::super::router(Arc::new(ApiState::new(
            Coordinator::new(&config, Vec::new(), Clock::new()),
            token.map(str::to_string),
        )))
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// `(method, path)` of every operation of a served document.
    fn operations(document: &Value) -> Vec<(String, String)> {
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method).is_some() {
                    operations.push((method.to_string(), path.clone()));
                }
            }
        }
        operations
    }

    /// A concrete request path for a documented one (`{vm}` → a valid VM id).
    fn concrete(path: &str) -> String {
        path.replace("{vm}", "vm-a")
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap())
            .uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from("{}")).unwrap())
            .await
            .unwrap();
        let status = response.status();
        // The event stream never ends: its status is all this needs.
        if path == "/v1/events" {
            return (status, Vec::new());
        }
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes().to_vec(),
        )
    }

    async fn served_document(app: &axum::Router) -> Value {
        let (status, body) = call(app, "get", "/v1/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice(&body).expect("the document is JSON")
    }

    /// The fallback's answer, which no documented route may give.
    fn is_fallback(status: StatusCode, body: &[u8]) -> bool {
        status == StatusCode::NOT_FOUND && String::from_utf8_lossy(body).contains("no such endpoint")
    }

    #[tokio::test]
    async fn every_documented_operation_is_served_and_no_other_method_on_its_path() {
        let app = app(None);
        let document = served_document(&app).await;
        let operations = operations(&document);
        assert!(operations.len() >= 19, "{operations:?}");
        for (method, path) in &operations {
            let (status, body) = call(&app, method, &concrete(path), None).await;
            assert!(
                !is_fallback(status, &body),
                "{method} {path} is documented but not served"
            );
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let documented = document["paths"][path][method]["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(status.as_str()),
                "{method} {path} answered {status}, which its operation does not list"
            );
        }
        for path in document["paths"].as_object().unwrap().keys() {
            for method in ["get", "put", "post", "delete", "patch"] {
                if document["paths"][path].get(method).is_none() {
                    let (status, _) = call(&app, method, &concrete(path), None).await;
                    assert_eq!(
                        status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path} is served but not documented"
                    );
                }
            }
        }
    }

    /// The router and the document come from one list; this proves the list holds what the API is
    /// known to serve (a route dropped from it fails here, a route added outside it cannot be, see
    /// [`super::super::routes`]).
    #[tokio::test]
    async fn the_document_lists_every_route_of_the_api() {
        let document = served_document(&app(None)).await;
        let mut operations = operations(&document);
        operations.sort();
        let mut expected: Vec<(String, String)> = [
            ("get", "/"),
            ("get", "/dashboard"),
            ("get", "/dashboard/app.js"),
            ("get", "/dashboard/style.css"),
            ("get", "/healthz"),
            ("get", "/metrics"),
            ("get", "/v1/balancer/phases"),
            ("get", "/v1/balancer/status"),
            ("put", "/v1/balancer/backends"),
            ("put", "/v1/balancer/vms/{vm}"),
            ("put", "/v1/balancer/vms/{vm}/addresses"),
            ("get", "/v1/balancer/vms/{vm}/drain"),
            ("get", "/v1/events"),
            ("get", "/v1/fleet"),
            ("get", "/v1/migrations"),
            ("get", "/v1/openapi.json"),
            ("get", "/v1/pools"),
            ("put", "/v1/pools/{pool}/backends/{address}"),
            ("delete", "/v1/pools/{pool}/backends/{address}"),
            ("post", "/v1/reload"),
            ("get", "/v1/vms"),
            ("get", "/v1/vms/{vm}"),
            ("post", "/v1/vms/{vm}/migration"),
            ("put", "/v1/vms/{vm}/migration/progress"),
        ]
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
        expected.sort();
        assert_eq!(operations, expected);
    }

    #[tokio::test]
    async fn every_reference_resolves_and_every_error_is_an_error_body() {
        let document = served_document(&app(Some("secret"))).await;
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
        let schemas = document["components"]["schemas"].as_object().unwrap();
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        out.push(target);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let mut targets = Vec::new();
        refs(&document, &mut targets);
        assert!(!targets.is_empty());
        for target in targets {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{target}: not a schema reference"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
        for (method, path) in operations(&document) {
            for (status, response) in document["paths"][&path][&method]["responses"]
                .as_object()
                .unwrap()
            {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn every_unsigned_integer_has_its_maximum() {
        let document = served_document(&app(None)).await;
        let timeout = &document["components"]["schemas"]["NoticeRequest"]["properties"]["timeout_ms"];
        assert_eq!(timeout["format"], "uint64", "{timeout}");
        assert_eq!(timeout["maximum"], u64::MAX, "{timeout}");
        assert!(!document.to_string().contains("u-int"));
    }

    #[tokio::test]
    async fn calls_that_need_the_token_say_so_only_on_a_node_with_a_token() {
        for token in [Some("secret"), None] {
            let app = app(token);
            let document = served_document(&app).await;
            assert!(document["components"]["securitySchemes"][BEARER].is_object());
            for (method, path) in operations(&document) {
                let security = &document["paths"][&path][&method]["security"];
                // Without a token a mutating call is not refused: it gets past the check (to
                // whatever its body or VM earns), and with one it is 401 without the header.
                let (status, _) = call(&app, &method, &concrete(&path), None).await;
                let refused = status == StatusCode::UNAUTHORIZED;
                match token {
                    Some(_) => assert_eq!(
                        refused,
                        security.is_array(),
                        "{method} {path}: refused without a token: {refused}, security: {security}"
                    ),
                    None => {
                        assert!(security.is_null(), "{method} {path}: {security}");
                        assert!(!refused, "{method} {path}");
                    }
                }
            }
        }
    }
}
