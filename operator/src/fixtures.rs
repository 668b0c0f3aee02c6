//! A scripted mock API server for in-process tests of the reconcile's I/O, in the style of
//! kube-rs's reference controller (controller-rs): the [`Client`] of a [`Context`] talks to a
//! `tower_test` mock service whose other end, a [`Script`], expects exactly the requests the
//! reconcile must send, in order, checks each one (method, path, query, content type and, where
//! it matters, body fields) and answers it.
//!
//! Why: the decision is pure and unit-tested ([`crate::decide`]), but what reaches the API server
//! (which write, in which order, with which precondition, and what is *not* written) is only
//! proven by the e2e tests, which need root and a cluster. These run anywhere in seconds with
//! `cargo test -p graceful-operator`.
//!
//! A scenario fails when the reconcile sends a request the script does not expect at that point,
//! misses one (the script waits for it until the client is gone), or sends one after the script
//! ended: [`MockApi::finish`] drops the context (and with it every client) and the script then
//! requires the channel to close with no further request.
//!
//! The object builders shared by the scenarios live in [`objects`]; the scenarios in `tests`.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock;

use crate::controller::{Context, reconcile};
use crate::crd::GracefulService;
use crate::error::Error;
use crate::metrics::Metrics;

#[path = "fixtures_objects.rs"]
pub(crate) mod objects;

#[path = "fixtures_tests.rs"]
mod tests;

/// The mock's end of the client's connection.
type Handle = mock::Handle<Request<Body>, Response<Body>>;

/// How long the script waits for a request (or for the client to go away) before failing: far
/// longer than an in-process reconcile takes, short enough that a hang fails the test quickly.
const PATIENCE: Duration = Duration::from_secs(5);

/// Assertions on a request's JSON body.
type Check = Box<dyn FnOnce(&Value) + Send>;

/// One request the reconcile must send, and the answer it gets.
pub(crate) struct Exchange {
    method: Method,
    path: String,
    /// Expected query parameters, decoded and sorted: exactly these, in any order.
    query: Vec<(String, String)>,
    content_type: Option<&'static str>,
    check: Option<Check>,
    reply: Reply,
}

/// What the mock answers.
enum Reply {
    /// The request's own body with 200: what an apply or a create returns, near enough.
    Echo,
    /// This status code and JSON body.
    Json(StatusCode, Value),
}

impl Exchange {
    fn new(method: Method, path: &str) -> Self {
        Self {
            method,
            path: path.to_string(),
            query: Vec::new(),
            content_type: None,
            check: None,
            reply: Reply::Echo,
        }
    }

    /// A GET of one object.
    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    /// A LIST by label selector.
    pub fn list(path: &str, selector: &str) -> Self {
        Self::new(Method::GET, path).query("labelSelector", selector)
    }

    /// A server-side apply with the operator's field manager, forced.
    pub fn apply(path: &str) -> Self {
        let mut exchange = Self::new(Method::PATCH, path)
            .query("fieldManager", crate::FIELD_MANAGER)
            .query("force", "true");
        exchange.content_type = Some("application/apply-patch+yaml");
        exchange
    }

    /// A create.
    pub fn post(path: &str) -> Self {
        Self::new(Method::POST, path)
    }

    /// Expects the query parameter `key` = `value` (decoded).
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_string(), value.to_string()));
        self.query.sort();
        self
    }

    /// Runs `check` on the request's JSON body (it asserts; Null when there is no body).
    pub fn check(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    /// Answers 200 with `body`.
    pub fn answer(mut self, body: Value) -> Self {
        self.reply = Reply::Json(StatusCode::OK, body);
        self
    }

    /// Answers with an API error: a `Status` of `code` and `reason`, as the API server does.
    pub fn fail(mut self, code: u16, reason: &str) -> Self {
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": format!("mock: {reason}"),
            "reason": reason,
            "code": code,
        });
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.reply = Reply::Json(code, status);
        self
    }

    /// Answers 404 NotFound.
    pub fn not_found(self) -> Self {
        self.fail(404, "NotFound")
    }

    /// Asserts `request` is this exchange and builds the answer.
    async fn verify(self, n: usize, request: Request<Body>) -> Response<Body> {
        let what = format!("request {n} {} {}", request.method(), request.uri());
        assert_eq!(request.method(), self.method, "{what}: wrong method");
        assert_eq!(request.uri().path(), self.path, "{what}: wrong path");
        assert_eq!(query(request.uri()), self.query, "{what}: wrong query");
        if let Some(expected) = self.content_type {
            let sent = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(sent, Some(expected), "{what}: wrong content type");
        }
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = match bytes.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(&bytes).unwrap(),
        };
        if let Some(check) = self.check {
            check(&body);
        }
        let (code, answer) = match self.reply {
            Reply::Echo => (StatusCode::OK, body),
            Reply::Json(code, answer) => (code, answer),
        };
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap()
    }
}

/// The query parameters of `uri`, decoded and sorted.
fn query(uri: &http::Uri) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect();
    pairs.sort();
    pairs
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// The requests a reconcile must send, in order.
pub(crate) type Script = Vec<Exchange>;

/// The scripts `parts`, one after the other.
pub(crate) fn chain<const N: usize>(parts: [Script; N]) -> Script {
    parts.into_iter().flatten().collect()
}

/// Plays `script` against the client's requests, then requires the client to go away with no
/// further request.
async fn serve(mut handle: Handle, script: Script) {
    let total = script.len();
    for (n, exchange) in (1..).zip(script) {
        let expected = format!("{} {}", exchange.method, exchange.path);
        let (request, respond) = match tokio::time::timeout(PATIENCE, handle.next_request()).await {
            Ok(Some(next)) => next,
            Ok(None) => panic!(
                "request {n} of {total} missing: expected {expected}, but the reconcile sent nothing more"
            ),
            Err(_) => panic!("request {n} of {total} ({expected}) not sent within {PATIENCE:?}"),
        };
        respond.send_response(exchange.verify(n, request).await);
    }
    match tokio::time::timeout(PATIENCE, handle.next_request()).await {
        Ok(None) => {}
        Ok(Some((request, _))) => panic!(
            "unexpected request after the {total} scripted ones: {} {}",
            request.method(),
            request.uri()
        ),
        Err(_) => panic!("the client was not dropped within {PATIENCE:?} of the script's end"),
    }
}

/// A [`Context`] whose client talks to a [`Script`].
pub(crate) struct MockApi {
    ctx: Arc<Context>,
    server: JoinHandle<()>,
}

impl MockApi {
    /// Empty caches: the Service and the budget are read with a GET.
    pub fn new(script: Script) -> Self {
        Self::with_cached(script, Vec::new(), Vec::new())
    }

    /// The Service and budget caches hold `services` and `budgets` (as their watches would).
    pub fn with_cached(
        script: Script,
        services: Vec<Service>,
        budgets: Vec<PodDisruptionBudget>,
    ) -> Self {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (ctx, mut writers) = Context::new(client, Metrics::default());
        for service in services {
            let event = watcher::Event::Apply(service);
            writers.services.apply_watcher_event(&event);
        }
        for budget in budgets {
            let event = watcher::Event::Apply(budget);
            writers.budgets.apply_watcher_event(&event);
        }
        let ctx = Arc::new(ctx);
        let server = tokio::spawn(serve(handle, script));
        Self { ctx, server }
    }

    /// The context (its metrics, its memory of applies).
    pub fn ctx(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// One reconcile of `gsvc`. When it fails because the script failed (a wrong request: the
    /// mock then answers nothing more), the script's own message fails the test instead.
    pub async fn reconcile(&mut self, gsvc: &GracefulService) -> Result<Action, Error> {
        let result = reconcile(Arc::new(gsvc.clone()), self.ctx.clone()).await;
        if result.is_err() && self.server.is_finished() {
            rethrow((&mut self.server).await);
        }
        result
    }

    /// Drops the context and waits for the script: fails the test with the script's own message
    /// if a request was wrong, missing or extra.
    pub async fn finish(self) {
        drop(self.ctx);
        rethrow(self.server.await);
    }
}

/// Fails the test with the script's panic, if it panicked.
fn rethrow(outcome: Result<(), tokio::task::JoinError>) {
    match outcome {
        Ok(()) => {}
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("mock API server: {error}"),
    }
}
