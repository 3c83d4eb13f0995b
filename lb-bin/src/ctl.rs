//! `ringlb ctl`: the operator's client of a running ringlb's admin API
//! (status, drain/disable/enable, weight, reload, join/leave), so that no
//! action needs curl and a bearer token typed by hand. Runs on the main
//! thread, with a current-thread tokio runtime for hyper's HTTP/1 client
//! (hyper is what the admin server itself is built on, already in the
//! build: no second HTTP stack). The admin API speaks plain HTTP only.
//!
//! Where the API is: `--admin ADDR` (and `--token-file F`), else the config
//! file's `[global] admin` and `admin_token`. The file is read leniently
//! (only those keys, and only the `[global]` table if the rest does not
//! parse), so that `ctl reload` of a broken file still reaches the server,
//! which refuses it with the reason and counts the failed reload.
//!
//! Exit status: 0 done, 1 refused or failed (the server's reason on
//! stderr), 2 usage or connection error.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::Value;

use crate::cli::{Ctl, CtlAction, DEFAULT_CONFIG};

/// The admin address when the config does not set one (lb-core's
/// `Global::default().admin`).
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// Largest config file read for the admin address (lb-core's limit).
const MAX_CONFIG_FILE: u64 = 1 << 20;
/// Largest answer read from the admin API (a status of thousands of
/// backends is a few MiB).
const MAX_ANSWER: usize = 64 << 20;
/// Largest token or join-key file read.
const MAX_SECRET_FILE: u64 = 64 << 10;

/// Why a ctl command did not succeed, as its exit status says.
#[derive(Debug)]
enum Failure {
    /// The server refused or failed the action: exit 1.
    Refused(String),
    /// Bad arguments, unreadable files, admin API unreachable: exit 2.
    Usage(String),
}

type Outcome<T> = Result<T, Failure>;

/// Runs one `ringlb ctl` command; `config` is the global `--config`.
pub(crate) fn run(ctl: Ctl, config: Option<PathBuf>) -> ExitCode {
    match run_inner(ctl, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(message)) => {
            say_err(&message);
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            say_err(&message);
            ExitCode::from(2)
        }
    }
}

/// To stdout; not println!, which panics on a closed pipe (`| head`).
fn say(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn say_err(message: &str) {
    let _ = writeln!(std::io::stderr(), "ringlb ctl: {message}");
}

fn run_inner(ctl: Ctl, config: Option<PathBuf>) -> Outcome<()> {
    let target = Target::find(&ctl, config)?;
    let client = Client::new(target, Duration::from_secs(ctl.timeout))?;
    match ctl.action {
        CtlAction::Status { json } => status(&client, json),
        CtlAction::Drain { backend } => set_state(&client, &backend, "drain"),
        CtlAction::Disable { backend } => set_state(&client, &backend, "disable"),
        CtlAction::Enable { backend } => set_state(&client, &backend, "enable"),
        CtlAction::Weight { backend, weight } => {
            let (service, name) = client.backend(&backend)?;
            let body = serde_json::json!({ "weight": weight }).to_string();
            let path = format!(
                "/api/v1/services/{}/backends/{}/weight",
                segment(&service),
                segment(&name)
            );
            let doc = client.call(Method::PUT, &path, Some(body), Auth::Token)?;
            say(&format!("{}\n", backend_line(&doc)));
            Ok(())
        }
        CtlAction::Reload => reload(&client),
        CtlAction::Join {
            service,
            name,
            address,
            weight,
        } => {
            let mut body = serde_json::json!({ "name": name, "address": address });
            if let Some(weight) = weight {
                body["weight"] = weight.into();
            }
            let path = format!("/api/v1/services/{}/join", segment(&service));
            let doc = client.call(Method::POST, &path, Some(body.to_string()), Auth::JoinKey)?;
            say(&format!("joined: {}\n", backend_line(&doc)));
            Ok(())
        }
        CtlAction::Leave { service, name } => {
            let body = serde_json::json!({ "name": name }).to_string();
            let path = format!("/api/v1/services/{}/leave", segment(&service));
            let doc = client.call(Method::POST, &path, Some(body), Auth::JoinKey)?;
            say(&format!("left: {}\n", backend_line(&doc)));
            Ok(())
        }
    }
}

/// `ctl status`: the table, or the API's JSON as it is.
fn status(client: &Client, json: bool) -> Outcome<()> {
    let (_, body) = client.exchange(Method::GET, "/api/v1/services", None, Auth::None)?;
    if json {
        say(&String::from_utf8_lossy(&body));
        return Ok(());
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|e| {
        Failure::Refused(format!(
            "the admin API's answer is not the expected JSON: {e}"
        ))
    })?;
    say(&status_table(&doc));
    Ok(())
}

/// `ctl drain|disable|enable BACKEND`.
fn set_state(client: &Client, backend: &str, action: &str) -> Outcome<()> {
    let (service, name) = client.backend(backend)?;
    let path = format!(
        "/api/v1/services/{}/backends/{}/{action}",
        segment(&service),
        segment(&name)
    );
    let doc = client.call(Method::POST, &path, None, Auth::Token)?;
    say(&format!("{}\n", backend_line(&doc)));
    Ok(())
}

/// `ctl reload`: the server re-reads its config file and answers with the
/// outcome; refused → exit 1 with the reason.
fn reload(client: &Client) -> Outcome<()> {
    match client.call(Method::POST, "/api/v1/reload", None, Auth::Token) {
        Ok(summary) => {
            let mut line = String::from("reload applied");
            let mut changes = Vec::new();
            for (key, what) in [
                ("services_added", "services added"),
                ("services_removed", "services removed"),
                ("backends_added", "backends added"),
                ("backends_removed", "backends removed"),
            ] {
                let names: Vec<&str> = summary[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !names.is_empty() {
                    changes.push(format!("{what}: {}", names.join(", ")));
                }
            }
            if changes.is_empty() {
                line.push_str(" (no service or backend added or removed)");
            } else {
                let _ = write!(line, " ({})", changes.join("; "));
            }
            say(&format!("{line}\n"));
            Ok(())
        }
        Err(Failure::Refused(reason)) => Err(Failure::Refused(format!(
            "reload refused: {reason}\nthe running config keeps serving"
        ))),
        Err(usage) => Err(usage),
    }
}

/// Which credential a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    /// `Authorization: Bearer <admin token>`, when one is known.
    Token,
    /// `X-Join-Key: <join key>`; the key is required.
    JoinKey,
}

/// The admin API to talk to, and with what.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// Where the address came from, for messages.
    source: String,
    token: Option<String>,
    join_key: Option<String>,
}

impl Target {
    fn find(ctl: &Ctl, config: Option<PathBuf>) -> Outcome<Target> {
        // The config is read when given, or when there is no --admin.
        let from_config = match (&ctl.admin, config) {
            (Some(_), None) => None,
            (_, Some(path)) => Some((Admin::read(&path)?, path)),
            (None, None) => {
                let path = PathBuf::from(DEFAULT_CONFIG);
                Some((Admin::read(&path)?, path))
            }
        };
        let (addr, source) = match &ctl.admin {
            Some(text) => (parse_admin_arg(text)?, "--admin".to_owned()),
            None => {
                let Some((admin, path)) = &from_config else {
                    return Err(Failure::Usage("give --admin ADDR or --config FILE".into()));
                };
                let addr = admin.address(path)?;
                (addr, format!("[global] admin in {}", path.display()))
            }
        };
        let token = match &ctl.token_file {
            Some(file) => Some(read_secret(file, "admin token")?),
            None => from_config.as_ref().and_then(|(a, _)| a.token.clone()),
        };
        let join_key = match &ctl.join_key_file {
            Some(file) => Some(read_secret(file, "join key")?),
            None => match &from_config {
                Some((admin, path)) => admin.join_key(path)?,
                None => None,
            },
        };
        Ok(Target {
            addr,
            source,
            token,
            join_key,
        })
    }
}

/// `--admin ADDR`: `IP:port`, `[IPv6]:port` or `localhost:port`.
fn parse_admin_arg(text: &str) -> Outcome<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(connectable(addr));
    }
    let bad = || {
        Failure::Usage(format!(
            "--admin {text:?} is not an address (expected IP:port, e.g. 127.0.0.1:9090)"
        ))
    };
    text.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// An unspecified listen address (`0.0.0.0:9090`) is reached on loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The admin settings of a config file, read leniently.
#[derive(Debug, Default)]
struct Admin {
    /// `admin` as written (None: the default).
    admin: Option<String>,
    token: Option<String>,
    join_key: Option<String>,
    join_key_file: Option<String>,
}

impl Admin {
    fn read(path: &Path) -> Outcome<Admin> {
        let text = read_bounded(path, MAX_CONFIG_FILE).map_err(|e| {
            Failure::Usage(format!(
                "cannot read {}: {e} (give the config with --config FILE, or the admin \
                 address with --admin ADDR)",
                path.display()
            ))
        })?;
        let global = match toml::from_str::<toml::Table>(&text) {
            Ok(mut doc) => doc.remove("global"),
            // A file the server will refuse: its [global] alone may still
            // say where the server listens.
            Err(_) => global_section(&text)
                .and_then(|section| toml::from_str::<toml::Table>(&section).ok())
                .and_then(|mut doc| doc.remove("global")),
        };
        let Some(global) = global else {
            if text.lines().any(|l| l.trim_start().starts_with("[global]")) {
                return Err(Failure::Usage(format!(
                    "cannot read the [global] table of {} (it is not valid TOML): give the \
                     admin address with --admin ADDR",
                    path.display()
                )));
            }
            return Ok(Admin::default());
        };
        let text_of = |key: &str| global.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        Ok(Admin {
            admin: text_of("admin"),
            token: text_of("admin_token"),
            join_key: text_of("join_key"),
            join_key_file: text_of("join_key_file"),
        })
    }

    /// Where to connect, or why ctl cannot.
    fn address(&self, path: &Path) -> Outcome<SocketAddr> {
        let Some(text) = &self.admin else {
            return Ok(DEFAULT_ADMIN);
        };
        if text == "off" {
            return Err(Failure::Usage(format!(
                "the admin API is off in {} ([global] admin = \"off\"), and ringlb ctl talks to \
                 it: set admin = \"127.0.0.1:9090\" there and restart ringlb (or reload with \
                 kill -HUP)",
                path.display()
            )));
        }
        let addr: SocketAddr = text.parse().map_err(|_| {
            Failure::Usage(format!(
                "[global] admin = {text:?} in {} is not an address: give --admin ADDR",
                path.display()
            ))
        })?;
        if addr.port() == 0 {
            return Err(Failure::Usage(format!(
                "[global] admin in {} has port 0 (the kernel picks one at start): give the \
                 port ringlb logged (\"admin API listening\") with --admin ADDR",
                path.display()
            )));
        }
        Ok(connectable(addr))
    }

    /// The join key, from `join_key` or `join_key_file` (relative to the
    /// config's directory, as the server reads it).
    fn join_key(&self, path: &Path) -> Outcome<Option<String>> {
        if let Some(key) = &self.join_key {
            return Ok(Some(key.clone()));
        }
        let Some(file) = &self.join_key_file else {
            return Ok(None);
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        read_secret(&dir.join(file), "join key").map(Some)
    }
}

/// The `[global]` table's lines of a file that does not parse as a whole:
/// from its header to the next table header.
fn global_section(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if inside {
                break;
            }
            inside = trimmed.starts_with("[global]");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A file of at most `limit` bytes, as text.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(limit + 1).read_to_string(&mut text)?;
    if text.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(text)
}

/// A secret from a file, trimmed (the newline an editor adds).
fn read_secret(path: &Path, what: &str) -> Outcome<String> {
    let text = read_bounded(path, MAX_SECRET_FILE).map_err(|e| {
        Failure::Usage(format!(
            "cannot read the {what} from {}: {e}",
            path.display()
        ))
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(Failure::Usage(format!(
            "{} is empty: it must hold the {what}",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

/// One path segment, percent-encoded (names are plain, but what the user
/// typed goes into a URL).
fn segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// An HTTP/1 client of one admin API.
struct Client {
    target: Target,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new(target: Target, timeout: Duration) -> Outcome<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Usage(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Client {
            target,
            timeout,
            runtime,
        })
    }

    /// A request whose answer is JSON: the document on 2xx, the server's
    /// `error` as a refusal otherwise.
    fn call(&self, method: Method, path: &str, body: Option<String>, auth: Auth) -> Outcome<Value> {
        let (_, answer) = self.exchange(method, path, body, auth)?;
        serde_json::from_slice(&answer).map_err(|e| {
            Failure::Refused(format!(
                "the admin API's answer is not the expected JSON: {e}"
            ))
        })
    }

    /// Sends one request; a 2xx answer's status and body, else the failure
    /// it means.
    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        auth: Auth,
    ) -> Outcome<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.target.addr.to_string())
            .header(
                header::USER_AGENT,
                concat!("ringlb-ctl/", env!("CARGO_PKG_VERSION")),
            );
        match auth {
            Auth::None => {}
            Auth::Token => {
                if let Some(token) = &self.target.token {
                    req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
                }
            }
            Auth::JoinKey => {
                let Some(key) = &self.target.join_key else {
                    return Err(Failure::Usage(
                        "join and leave need the join key: give --join-key-file FILE, or a \
                         config with join_key or join_key_file"
                            .into(),
                    ));
                };
                req = req.header("x-join-key", key.as_str());
            }
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Usage(format!("cannot build the request: {e}")))?;
        let addr = self.target.addr;
        let answer = self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, send(addr, req)).await });
        let (status, bytes) = match answer {
            Err(_) => {
                return Err(Failure::Usage(format!(
                    "the admin API at {addr} did not answer within {} s",
                    self.timeout.as_secs()
                )))
            }
            Ok(Err(Stage::Connect(e))) => {
                return Err(Failure::Usage(format!(
                    "cannot reach the admin API at {addr} (from {}): {e} — is ringlb running, \
                     and is [global] admin set to this address?",
                    self.target.source
                )))
            }
            Ok(Err(Stage::Exchange(e))) => {
                return Err(Failure::Usage(format!(
                    "the admin API at {addr} did not answer: {e}"
                )))
            }
            Ok(Ok(answer)) => answer,
        };
        if status.is_success() {
            return Ok((status, bytes));
        }
        let reason = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
        let hint = match status {
            StatusCode::UNAUTHORIZED if auth == Auth::Token => {
                " (give the token with --token-file FILE, or the config holding admin_token \
                 with --config FILE)"
            }
            StatusCode::FORBIDDEN if reason.contains("admin_allow") => {
                " (run ringlb ctl from an address in [global] admin_allow)"
            }
            _ => "",
        };
        Err(Failure::Refused(format!("{reason}{hint}")))
    }

    /// `SERVICE/BACKEND`, or a `BACKEND` name that is in one service only
    /// (looked up in the status).
    fn backend(&self, spec: &str) -> Outcome<(String, String)> {
        if let Some((service, backend)) = spec.split_once('/') {
            if service.is_empty() || backend.is_empty() || backend.contains('/') {
                return Err(Failure::Usage(format!(
                    "{spec:?} is not SERVICE/BACKEND or BACKEND"
                )));
            }
            return Ok((service.to_owned(), backend.to_owned()));
        }
        let doc = self.call(Method::GET, "/api/v1/services", None, Auth::None)?;
        let mut found = Vec::new();
        let mut every = Vec::new();
        for service in doc["services"].as_array().into_iter().flatten() {
            let service_name = service["name"].as_str().unwrap_or_default();
            for backend in service["backends"].as_array().into_iter().flatten() {
                let name = backend["name"].as_str().unwrap_or_default();
                every.push(format!("{service_name}/{name}"));
                if name == spec {
                    found.push(service_name.to_owned());
                }
            }
        }
        match found.as_slice() {
            [service] => Ok((service.clone(), spec.to_owned())),
            [] => Err(Failure::Refused(format!(
                "no backend named {spec:?} (backends: {})",
                if every.is_empty() {
                    "none".to_owned()
                } else {
                    every.join(", ")
                }
            ))),
            several => Err(Failure::Usage(format!(
                "{spec:?} is a backend of several services: say which, as {}",
                several
                    .iter()
                    .map(|s| format!("{s}/{spec}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
        }
    }
}

/// Where a request failed.
enum Stage {
    Connect(std::io::Error),
    Exchange(String),
}

/// One request on a fresh connection.
async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), Stage> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(Stage::Connect)?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Stage::Exchange(e.to_string()))?;
    // The connection is driven while the request is: both in this task.
    let exchange = async {
        let answer = sender
            .send_request(req)
            .await
            .map_err(|e| Stage::Exchange(e.to_string()))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Stage::Exchange(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, Stage>((status, body))
    };
    tokio::pin!(connection);
    tokio::pin!(exchange);
    tokio::select! {
        answer = &mut exchange => answer,
        ended = &mut connection => match ended {
            Err(e) => Err(Stage::Exchange(e.to_string())),
            // Closed after the answer: the exchange finishes it.
            Ok(()) => exchange.await,
        },
    }
}

/// `web/app1: DRAINING (admin drain, health up: probe passed; weight 100)`.
fn backend_line(doc: &Value) -> String {
    let s = |key: &str| doc[key].as_str().unwrap_or("?").to_owned();
    format!(
        "{}/{}: {} (admin {}, health {}: {}; weight {}; {} active)",
        s("service"),
        s("name"),
        s("state"),
        s("admin"),
        s("health"),
        s("reason"),
        doc["weight"].as_u64().unwrap_or_default(),
        doc["active"].as_u64().unwrap_or_default(),
    )
}

/// The status as a table: a line per service, then a row per backend.
fn status_table(doc: &Value) -> String {
    let mut rows: Vec<[String; 10]> = vec![[
        "SERVICE".into(),
        "BACKEND".into(),
        "ADDRESS".into(),
        "STATE".into(),
        "HEALTH".into(),
        "WEIGHT".into(),
        "ACTIVE".into(),
        "TOTAL".into(),
        "IN/OUT".into(),
        "REASON".into(),
    ]];
    let mut services = Vec::new();
    for service in doc["services"].as_array().into_iter().flatten() {
        let name = service["name"].as_str().unwrap_or("?");
        let listen: Vec<&str> = service["listen"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let backends = service["backends"].as_array().map_or(0, Vec::len);
        services.push(format!(
            "service {name}: listen {}, {}, {} of {backends} backends usable, {} active, {} accepted",
            listen.join(" "),
            service["balance"].as_str().unwrap_or("?"),
            service["usable_backends"].as_u64().unwrap_or_default(),
            service["active"].as_u64().unwrap_or_default(),
            service["accepted"].as_u64().unwrap_or_default(),
        ));
        for b in service["backends"].as_array().into_iter().flatten() {
            let s = |key: &str| b[key].as_str().unwrap_or("?").to_owned();
            let n = |key: &str| b[key].as_u64().unwrap_or_default();
            let mut backend = s("name");
            if b["joined"].as_bool() == Some(true) {
                backend.push_str(" (joined)");
            }
            rows.push([
                name.to_owned(),
                backend,
                s("address"),
                s("state"),
                s("health"),
                n("weight").to_string(),
                n("active").to_string(),
                n("total").to_string(),
                format!(
                    "{}/{}",
                    human_bytes(n("bytes_to_backend")),
                    human_bytes(n("bytes_to_client"))
                ),
                s("reason"),
            ]);
        }
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &services {
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `1.5 KiB`, `3.2 GiB`; bytes below 1 KiB as they are.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_global_table_of_a_broken_file_is_found() {
        let text = "# ringlb\n[global]\nadmin = \"127.0.0.1:9191\"\nadmin_token = \"t\"\n\n\
                    [[service]]\nname = \"web\nlisten = [\n";
        assert!(toml::from_str::<toml::Table>(text).is_err());
        let section = global_section(text).expect("a [global] section");
        assert_eq!(
            section,
            "[global]\nadmin = \"127.0.0.1:9191\"\nadmin_token = \"t\"\n\n"
        );
        assert_eq!(global_section("[[service]]\nname = \"a\"\n"), None);
    }

    #[test]
    fn unspecified_admin_addresses_are_reached_on_loopback() {
        let at = |s: &str| connectable(s.parse().expect("addr")).to_string();
        assert_eq!(at("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(at("[::]:9090"), "[::1]:9090");
        assert_eq!(at("10.0.0.1:9090"), "10.0.0.1:9090");
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("app-1.b_2"), "app-1.b_2");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
