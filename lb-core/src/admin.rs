//! The admin HTTP/1 server: ringlb's own health, Prometheus metrics, the
//! status page and the JSON API that drains, disables, enables and
//! re-weights backends. Runs as a task on the control plane's
//! current-thread runtime (see `control/plane.rs`).
//!
//! It never touches the registry: reads ask the control plane for a
//! [`StatusView`] (a [`Command::Status`] with a oneshot reply) and actions
//! are [`Command`]s answered the same way, so the control plane applies
//! them between its other events, in order, and publishes a new snapshot.
//! A handler waits for those replies with a deadline and answers 503 if the
//! control plane is busy shutting down.
//!
//! Who may talk to it: a peer outside `admin_allow` gets 403 before a byte
//! of its request is read; with `admin_token` set, every request that is
//! not a GET needs `Authorization: Bearer <token>` (401 otherwise), except
//! the join endpoints, which need the join key instead (`admin/join.rs`);
//! a POST or PUT from a web page of another origin is refused (403).
//! Requests are bounded: 16 KiB of head, 64 KiB of body, 10 s to send the
//! head (also the keep-alive idle limit), 10 s for the body, 64 connections
//! at once.
//! Bad input is answered (`{"error": "…"}`), never panicked on.

pub(crate) mod auth;
pub(crate) mod join;
pub(crate) mod limit;
pub(crate) mod view;

// Hostile-input property tests (src/fuzz.rs).
#[cfg(test)]
mod fuzz;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::access_log::AccessLogHandle;
use crate::config::{AdminState, Global, IpNet, Weight, MAX_WEIGHT};
use crate::control::command::{self, Command};
use crate::control::RegistryError;
use crate::stats::{ConnectionBudget, LocalKind, LOCAL_ERRORS};
use crate::supervisor::Supervisor;
use crate::worker::WorkerControl;
use auth::Credentials;
use join::Membership;
use limit::FailureLimiter;
pub(crate) use view::StatusView;
use view::{BackendDoc, HealthDoc, ServicesDoc};

/// Largest request body read (`{"weight": N}` and the join bodies).
const MAX_BODY: usize = 64 << 10;
/// Largest request head (request line and headers); hyper's minimum is 8 KiB.
const MAX_HEAD: usize = 16 << 10;
/// Time to send a request head; also how long an idle keep-alive
/// connection stays open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request body once the head is in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handler waits for the control plane's answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more get 503 and are closed. (The
/// connection budget reserves descriptors for them: `budget.rs`.)
const MAX_CONNECTIONS: usize = crate::budget::ADMIN_CONNECTIONS as usize;
/// Refused connections (403/503 written, then closed) handled at once;
/// beyond that they are closed without an answer.
const MAX_REFUSALS: usize = crate::budget::ADMIN_REFUSALS as usize;
/// How long a refused connection is kept to deliver its answer.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (EMFILE and the like) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const STATUS_PAGE: &str = include_str!("admin/status.html");
/// The page is self-contained: inline style and script, fetches to itself.
const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// What the admin server needs, cloned from the config and the server at
/// start. (Not called `AdminState`: that is the backend's operator state.)
#[derive(Debug)]
pub(crate) struct AdminContext {
    /// Peers allowed to connect at all.
    allow: Vec<IpNet>,
    /// Bearer token every state-changing request must carry, if set.
    token: Option<String>,
    /// The control plane's command queue: status reads and actions.
    commands: mpsc::UnboundedSender<Command>,
    /// Per-worker counters and the draining flag (read directly: atomics).
    workers: Vec<Arc<WorkerControl>>,
    /// The process's connection budget (for /metrics).
    budget: Arc<ConnectionBudget>,
    /// This node's name in the health answer (the host name).
    node_id: String,
    /// Connections being served.
    connections: Arc<Semaphore>,
    /// Connections being refused.
    refusals: Arc<Semaphore>,
    /// Failed join-key attempts per peer. A std mutex: it is held for a
    /// few map operations, never across an await.
    join_failures: Mutex<FailureLimiter>,
    /// Spawns the connection tasks, so that a panic in one is reported
    /// (and ends ringlb) instead of vanishing into tokio.
    supervisor: Supervisor,
    /// The access log (reopen, and its counters on /metrics); None: off.
    access_log: Option<AccessLogHandle>,
}

impl AdminContext {
    pub(crate) fn new(
        global: &Global,
        commands: mpsc::UnboundedSender<Command>,
        workers: Vec<Arc<WorkerControl>>,
        budget: Arc<ConnectionBudget>,
        supervisor: Supervisor,
        access_log: Option<AccessLogHandle>,
    ) -> AdminContext {
        AdminContext {
            allow: global.admin_allow.clone(),
            token: global.admin_token.clone(),
            commands,
            workers,
            budget,
            node_id: host_name(),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            join_failures: Mutex::new(FailureLimiter::new(
                join::PEER_FAILURES,
                join::GLOBAL_FAILURES,
                join::FAILURE_PEERS,
            )),
            supervisor,
            access_log,
        }
    }

    /// False once shutdown began (a drain announced, or the workers
    /// stopped accepting).
    fn serving(&self) -> bool {
        self.stopping().is_none()
    }

    /// Why this instance no longer takes new clients, if it is stopping.
    fn stopping(&self) -> Option<&'static str> {
        if self.workers.iter().any(|w| w.draining.load(Relaxed)) {
            Some("shutting down: not accepting new connections")
        } else if self.workers.iter().any(|w| w.announcing.load(Relaxed)) {
            Some("draining: still accepting until drain_announce ends; send new clients elsewhere")
        } else {
            None
        }
    }
}

/// Binds the admin listener (non-blocking, ready for [`run`]). Done at
/// start-up with the other listeners, so a busy port fails the start.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves the admin API on a listening socket another process handed over
/// (binary upgrade) or systemd passed.
pub(crate) fn adopt(socket: socket2::Socket) -> std::io::Result<std::net::TcpListener> {
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// [`serve`] on a listener from [`bind`]; must run inside the runtime.
pub(crate) async fn run(listener: std::net::TcpListener, ctx: AdminContext) {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => serve(listener, ctx).await,
        Err(e) => tracing::error!(error = %e, "the admin listener cannot join the runtime"),
    }
}

/// Accepts and serves admin connections until the runtime stops.
pub(crate) async fn serve(listener: tokio::net::TcpListener, ctx: AdminContext) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(admin = %addr, token = ctx.token.is_some(), "admin API listening");
    }
    let ctx = Arc::new(ctx);
    // One descriptor kept free: at EMFILE it is given up so that one more
    // admin connection (a health check, a scrape) is still answered.
    let mut spare = open_spare();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if LocalKind::of(&e) == Some(LocalKind::Emfile) && spare.take().is_some() {
                    continue;
                }
                if LOCAL_ERRORS
                    .record(&e, &"accepting an admin connection (retrying in 100ms)")
                    .is_none()
                {
                    tracing::warn!(error = %e, "admin accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if spare.is_none() {
            spare = open_spare();
        }
        if !auth::peer_allowed(&ctx.allow, peer.ip()) {
            tracing::debug!(peer = %peer, "admin connection refused: not in admin_allow");
            refuse(
                &ctx,
                stream,
                "403 Forbidden",
                "your address is not in admin_allow",
            );
            continue;
        }
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            refuse(
                &ctx,
                stream,
                "503 Service Unavailable",
                "too many admin connections; try again",
            );
            continue;
        };
        let task = ctx.clone();
        ctx.supervisor.spawn_task("admin connection", async move {
            let ctx = task;
            let io = hyper_util::rt::TokioIo::new(stream);
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(ctx.answer(req, peer).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(io, service)
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "admin connection ended");
            }
            drop(permit);
        });
    }
}

/// The admin server's spare descriptor (/dev/null), if one can be had.
fn open_spare() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Answers a connection with a fixed error without reading its request,
/// then closes it. The answer is written first and the write side shut
/// down; whatever the peer sent is discarded until it closes (bounded), so
/// that closing does not reset the connection under the answer.
fn refuse(ctx: &AdminContext, mut stream: TcpStream, status: &'static str, message: &str) {
    let Ok(permit) = ctx.refusals.clone().try_acquire_owned() else {
        return; // dropping the stream closes it
    };
    let body = serde_json::json!({ "error": message }).to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    ctx.supervisor.spawn_task("admin refusal", async move {
        let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut discarded = 0;
            while discarded < MAX_BODY {
                match stream.read(&mut sink).await? {
                    0 => break,
                    n => discarded += n,
                }
            }
            Ok::<(), std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// An admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `GET /`: the status page.
    StatusPage,
    /// `GET /router/api/v1/system/health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /api/v1/services`.
    Services,
    /// `POST /api/v1/reload`: read the config file again (as SIGHUP).
    Reload,
    /// `POST /api/v1/log/reopen`: reopen the access log (as SIGUSR1).
    LogReopen,
    /// `/api/v1/services/{service}/backends/{backend}/{action}`.
    Backend {
        service: &'a str,
        backend: &'a str,
        action: Action,
    },
    /// `POST /api/v1/services/{service}/join` or `…/leave` (join key).
    Membership { service: &'a str, op: Membership },
}

/// What an action route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// POST: set the admin state.
    Set(AdminState),
    /// PUT `{"weight": N}`.
    Weight,
}

impl<'a> Route<'a> {
    /// Matches a request path (query already split off by `Uri::path`).
    pub(crate) fn parse(path: &'a str) -> Option<Route<'a>> {
        let rest = path.strip_prefix('/')?;
        let segments: Vec<&str> = rest.split('/').collect();
        match segments.as_slice() {
            [""] => Some(Route::StatusPage),
            ["router", "api", "v1", "system", "health"] => Some(Route::Health),
            ["metrics"] => Some(Route::Metrics),
            ["api", "v1", "services"] => Some(Route::Services),
            ["api", "v1", "reload"] => Some(Route::Reload),
            ["api", "v1", "log", "reopen"] => Some(Route::LogReopen),
            ["api", "v1", "services", service, op] if !service.is_empty() => {
                let op = match *op {
                    "join" => Membership::Join,
                    "leave" => Membership::Leave,
                    _ => return None,
                };
                Some(Route::Membership { service, op })
            }
            ["api", "v1", "services", service, "backends", backend, action]
                if !service.is_empty() && !backend.is_empty() =>
            {
                let action = match *action {
                    "drain" => Action::Set(AdminState::Drain),
                    "disable" => Action::Set(AdminState::Disabled),
                    "enable" => Action::Set(AdminState::Enabled),
                    "weight" => Action::Weight,
                    _ => return None,
                };
                Some(Route::Backend {
                    service,
                    backend,
                    action,
                })
            }
            _ => None,
        }
    }

    /// The method the route answers (GET routes answer HEAD too).
    pub(crate) fn method(&self) -> Method {
        match self {
            Route::Backend {
                action: Action::Set(_),
                ..
            }
            | Route::Reload
            | Route::LogReopen
            | Route::Membership { .. } => Method::POST,
            Route::Backend {
                action: Action::Weight,
                ..
            } => Method::PUT,
            _ => Method::GET,
        }
    }

    pub(crate) fn accepts(&self, method: &Method) -> bool {
        let want = self.method();
        *method == want || (want == Method::GET && *method == Method::HEAD)
    }
}

/// The body of `PUT …/weight`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: i64,
}

/// The control plane did not answer (shutting down, or stuck).
#[derive(Debug)]
struct Unavailable;

impl AdminContext {
    /// Routes, checks and answers one request.
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let Some(route) = Route::parse(&path) else {
            return error(StatusCode::NOT_FOUND, format!("no endpoint at {path}"));
        };
        if !route.accepts(req.method()) {
            let allow = route.method();
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {allow}, not {}", req.method()),
            );
            let allow = match allow {
                Method::POST => "POST",
                Method::PUT => "PUT",
                _ => "GET, HEAD",
            };
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        match route {
            Route::StatusPage => page(),
            Route::Health => self.health().await,
            Route::Metrics => match self.status(false).await {
                Ok(view) => respond(
                    StatusCode::OK,
                    crate::metrics::CONTENT_TYPE,
                    crate::metrics::render(
                        &view,
                        &self.workers,
                        &self.budget,
                        self.access_log.as_ref(),
                    ),
                ),
                Err(Unavailable) => unavailable(),
            },
            Route::Services => match self.status(true).await {
                Ok(view) => json(
                    StatusCode::OK,
                    &ServicesDoc::new(&view, &self.node_id, SystemTime::now()),
                ),
                Err(Unavailable) => unavailable(),
            },
            Route::Reload => {
                if let Some(refusal) = self.check_writer(&req) {
                    return refusal;
                }
                match self.ask(|reply| Command::Reload { reply }).await {
                    Ok(Ok(summary)) => json(StatusCode::OK, &summary),
                    // The file is refused: nothing changed.
                    Ok(Err(reason)) => error(StatusCode::UNPROCESSABLE_ENTITY, reason.to_string()),
                    Err(Unavailable) => unavailable(),
                }
            }
            Route::LogReopen => {
                if let Some(refusal) = self.check_writer(&req) {
                    return refusal;
                }
                match &self.access_log {
                    Some(log) => {
                        tracing::info!(peer = %peer, "admin: reopening the access log");
                        log.reopen();
                        // Done on the writer's thread; a failure is logged
                        // there and the old file stays in use.
                        json(
                            StatusCode::ACCEPTED,
                            &serde_json::json!({"access_log": "reopen requested"}),
                        )
                    }
                    None => error(
                        StatusCode::CONFLICT,
                        "the access log is off (set [global] access_log and restart)",
                    ),
                }
            }
            Route::Backend {
                service,
                backend,
                action,
            } => {
                if let Some(refusal) = self.check_writer(&req) {
                    return refusal;
                }
                self.act(req, peer, service, backend, action).await
            }
            Route::Membership { service, op } => self.membership(req, peer, service, op).await,
        }
    }

    /// Refuses a state-changing request from another origin or without the
    /// token; None lets it through.
    fn check_writer(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        if let Some(refusal) = check_origin(req) {
            return Some(refusal);
        }
        let h = req.headers();
        let token = self.token.as_deref()?;
        let creds =
            Credentials::from_header(h.get(header::AUTHORIZATION).map(HeaderValue::as_bytes));
        if creds.match_token(token) {
            return None;
        }
        let message = match creds {
            Credentials::Missing => {
                "this action needs the admin token: send Authorization: Bearer <admin_token>"
            }
            Credentials::Malformed => "the Authorization header must be: Bearer <admin_token>",
            Credentials::Bearer(_) => "wrong admin token",
        };
        let mut resp = error(StatusCode::UNAUTHORIZED, message);
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ringlb admin\""),
        );
        Some(resp)
    }

    async fn health(&self) -> Response<Full<Bytes>> {
        let stopping = self.stopping();
        let view = self.status(false).await.ok();
        let doc = HealthDoc::new(view.as_ref(), &self.node_id, stopping);
        let status = if doc.healthy() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, &doc)
    }

    /// Applies an action through the control plane; answers the backend's
    /// new state.
    async fn act(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        service: &str,
        backend: &str,
        action: Action,
    ) -> Response<Full<Bytes>> {
        let result = match action {
            Action::Set(state) => {
                self.ask(|reply| Command::Admin {
                    service: service.into(),
                    backend: backend.into(),
                    state,
                    reply,
                })
                .await
            }
            Action::Weight => {
                let weight = match read_weight(req.into_body()).await {
                    Ok(w) => w,
                    Err(resp) => return resp,
                };
                self.ask(|reply| Command::Weight {
                    service: service.into(),
                    backend: backend.into(),
                    weight,
                    reply,
                })
                .await
            }
        };
        match result {
            Err(Unavailable) => return unavailable(),
            Ok(Err(e @ (RegistryError::NoService(_) | RegistryError::NoBackend { .. }))) => {
                return error(StatusCode::NOT_FOUND, e.to_string());
            }
            Ok(Err(e @ RegistryError::Maglev { .. })) => {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            Ok(Ok(())) => {}
        }
        tracing::info!(peer = %peer, service = %service, backend = %backend, action = ?action, "admin action");
        let Ok(view) = self.status(true).await else {
            return unavailable();
        };
        match view.backend(service, backend) {
            Some((s, b)) => json(StatusCode::OK, &BackendDoc::new(s, b)),
            // Removed by a reload in between: it exists no more.
            None => error(
                StatusCode::NOT_FOUND,
                format!("service {service:?} has no backend named {backend:?}"),
            ),
        }
    }

    /// The registry as it is now; `history`: with the backends' samples and
    /// transitions (only the JSON documents show them).
    async fn status(&self, history: bool) -> Result<StatusView, Unavailable> {
        self.ask(|reply| Command::Status { history, reply }).await
    }

    /// Sends a command and waits (bounded) for its reply. While shutting
    /// down the control plane only waits for connections: fail at once.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Unavailable> {
        if !self.serving() {
            return Err(Unavailable);
        }
        command::ask(&self.commands, command, CONTROL_TIMEOUT)
            .await
            .ok_or(Unavailable)
    }
}

/// Refuses a state-changing request sent by a web page of another origin;
/// None lets it through.
fn check_origin(req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let h = req.headers();
    let origin = h.get(header::ORIGIN).map(HeaderValue::as_bytes);
    let host = h.get(header::HOST).map(HeaderValue::as_bytes);
    auth::cross_origin(origin, host).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: use the status page served by this admin address",
        )
    })
}

/// Reads a request body, bounded in size ([`MAX_BODY`]) and time
/// ([`BODY_TIMEOUT`]); the error is the answer to send.
async fn read_body(body: Incoming) -> Result<Bytes, Response<Full<Bytes>>> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Reads and checks `{"weight": N}`; the error is the answer to send.
async fn read_weight(body: Incoming) -> Result<NonZeroU32, Response<Full<Bytes>>> {
    let bytes = read_body(body).await?;
    parse_weight(&bytes).map_err(|message| error(StatusCode::BAD_REQUEST, message))
}

/// Parses `{"weight": N}`; the error says what was wrong.
pub(crate) fn parse_weight(bytes: &[u8]) -> Result<NonZeroU32, String> {
    let body: WeightBody = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "the body must be JSON {{\"weight\": N}} with N from 1 to {MAX_WEIGHT}: {}",
            crate::excerpt::json_error(&e)
        )
    })?;
    Weight::try_from(body.weight)
        .map(Weight::get)
        .map_err(|e| e.to_string())
}

fn page() -> Response<Full<Bytes>> {
    let mut resp = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        Bytes::from_static(STATUS_PAGE.as_bytes()),
    );
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(STATUS_PAGE_CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn unavailable() -> Response<Full<Bytes>> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the control plane did not answer (shutting down?); try again",
    )
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            respond(status, "application/json", body)
        }
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            format!(
                "{{\"error\":\"cannot encode the answer: {}\"}}\n",
                e.to_string().replace(['"', '\\'], "'")
            ),
        ),
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// This machine's host name (the kernel's UTS name), for `node_id`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ringlb".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/"), Some(Route::StatusPage));
        assert_eq!(
            Route::parse("/router/api/v1/system/health"),
            Some(Route::Health)
        );
        assert_eq!(Route::parse("/metrics"), Some(Route::Metrics));
        assert_eq!(Route::parse("/api/v1/services"), Some(Route::Services));
        assert_eq!(
            Route::parse("/api/v1/services/web/backends/b1/drain"),
            Some(Route::Backend {
                service: "web",
                backend: "b1",
                action: Action::Set(AdminState::Drain)
            })
        );
        assert_eq!(
            Route::parse("/api/v1/services/web/backends/b1/weight"),
            Some(Route::Backend {
                service: "web",
                backend: "b1",
                action: Action::Weight
            })
        );
        assert_eq!(
            Route::parse("/api/v1/services/web/join"),
            Some(Route::Membership {
                service: "web",
                op: Membership::Join
            })
        );
        assert_eq!(
            Route::parse("/api/v1/services/web/leave"),
            Some(Route::Membership {
                service: "web",
                op: Membership::Leave
            })
        );
        for bad in [
            "",
            "/metrics/",
            "/api/v1/services//join",
            "/api/v1/services/web/join/",
            "/api/v1/services/web/explode",
            "/api/v1/services/",
            "/api/v1/services/web/backends/b1/explode",
            "/api/v1/services//backends/b1/drain",
            "/api/v1/services/web/backends/b1/drain/more",
            "//",
        ] {
            assert_eq!(Route::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn methods() {
        let drain = Route::parse("/api/v1/services/a/backends/b/drain").expect("route");
        assert!(drain.accepts(&Method::POST));
        assert!(!drain.accepts(&Method::GET));
        let weight = Route::parse("/api/v1/services/a/backends/b/weight").expect("route");
        assert!(weight.accepts(&Method::PUT));
        assert!(!weight.accepts(&Method::POST));
        let join = Route::parse("/api/v1/services/a/join").expect("route");
        assert!(join.accepts(&Method::POST));
        assert!(!join.accepts(&Method::GET));
        assert!(!join.accepts(&Method::PUT));
        assert!(Route::Metrics.accepts(&Method::GET));
        assert!(Route::Metrics.accepts(&Method::HEAD));
        assert!(!Route::Metrics.accepts(&Method::POST));
    }

    #[test]
    fn the_status_page_is_self_contained() {
        assert!(STATUS_PAGE.starts_with("<!doctype html>"));
        // The SVG namespace is a name that createElementNS needs, not a
        // resource: nothing is fetched from it.
        let page = STATUS_PAGE.replace("\"http://www.w3.org/2000/svg\"", "");
        for external in ["http://", "https://", "src=\"//", "href=\"//"] {
            assert!(!page.contains(external), "{external}");
        }
    }
}
