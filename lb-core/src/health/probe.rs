//! One health probe of one backend: a TCP connect, or an HTTP(S) `GET` of
//! the check's path, directly or through an outbound HTTP proxy. Runs on the
//! control-plane thread's tokio runtime (never in a worker); the prober calls
//! it once per interval per backend.
//!
//! The WHOLE probe (connect, proxy CONNECT, TLS handshake, request, reading
//! the body up to `max_body`) is bounded by the check's `timeout`: a backend
//! that accepts and never answers, or sends an endless body, is a
//! [`Reason::Timeout`]. Nothing the network sends can panic it.
//!
//! Request: `GET {path}` with `Host` (the check's `host`, else the backend's
//! address), `User-Agent: ringlb-health`, `Connection: close`, over hyper's
//! client connection API (no pool: one connection per probe).
//!
//! TLS ([`TlsProbeConfig`], built once per service): certificates are
//! verified against the check's `ca_file` (a CA, or the server's own
//! certificate, which is then pinned: an exact match is accepted whatever its
//! issuer, name or dates); the server name sent and checked is `sni`, else
//! `host` (without port), else the backend's IP. `insecure_skip_verify`
//! accepts any certificate but still checks the handshake signatures.
//!
//! PROXY header (`[service.health] send_proxy = true`, for backends that
//! require one on every connection): written first on every probe, before
//! the request and before a TLS handshake, in the probed backend's version
//! (v2 `LOCAL`; v1 a line of the probe socket's own addresses, or
//! `UNKNOWN` through a proxy's tunnel: see `proxy_header::encode`).
//! Through an outbound proxy it needs a tunnel to reach the backend, so
//! plain HTTP then uses `CONNECT` too.
//!
//! Proxy ([`ProxySettings`]): plain HTTP sends the request in absolute form
//! (`GET http://10.0.0.11:8081/path`) to the proxy; HTTPS opens a tunnel with
//! `CONNECT 10.0.0.11:8081` (a 2xx answer expected), then TLS through it.
//! The proxy is always given the backend's *address*, never the `host` name:
//! a probe must reach this one backend, and a name (often shared by all
//! nodes, or resolving differently at the proxy) could lead elsewhere. The
//! name still decides whether to use the proxy, and is still the `Host`
//! header and the TLS server name. Note: through a plain-HTTP proxy, the
//! backend sees the `Host` the proxy derives from the absolute URL.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::proxy::{split_host_port, ProxyAddr, ProxySettings};
use super::verdict::{judge, Reason};
use crate::config::{HealthCheck, HealthKind};
use crate::proxy_header::probe_header;
use crate::stats::LOCAL_ERRORS;

/// Value of the `User-Agent` header of every probe.
pub const USER_AGENT_VALUE: &str = "ringlb-health";

/// Longest proxy answer to `CONNECT` (status line and headers) accepted.
const MAX_CONNECT_ANSWER: usize = 8 * 1024;

/// TLS settings of one service's HTTPS probes, built once (reading the CA
/// file and building the verifier is too costly to repeat per probe).
#[derive(Clone)]
pub struct TlsProbeConfig {
    connector: TlsConnector,
    /// From `sni`, else `host`; None: the backend's IP, chosen per probe.
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for TlsProbeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProbeConfig")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsProbeConfig {
    /// Reads the check's `ca_file` and builds the client configuration.
    /// Logs a warning when `insecure_skip_verify` is set.
    pub fn new(check: &HealthCheck) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = if check.insecure_skip_verify {
            tracing::warn!(
                sni = ?check.sni,
                host = ?check.host,
                "health checks: insecure_skip_verify is set: backend certificates are NOT \
                 verified (anyone on the path can pose as a backend)"
            );
            Arc::new(AnyCertificate {
                provider: provider.clone(),
            })
        } else {
            let path = check.ca_file.as_deref().ok_or_else(|| {
                "kind = \"https\" needs ca_file (the cluster's CA or certificate, PEM) \
                 or insecure_skip_verify = true"
                    .to_owned()
            })?;
            Arc::new(CaOrPinned::new(path, provider.clone())?)
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = check
            .sni
            .as_deref()
            .or_else(|| check.host.as_deref().map(host_name));
        let server_name = match name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("TLS server name {name:?}: {e}"))?,
            ),
        };
        Ok(TlsProbeConfig {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

/// Probes `addr` once according to `check` (see the module doc). `tls` is
/// needed for `kind = "https"` (without it the probe fails with a TLS
/// reason); `proxy` applies to HTTP and HTTPS probes.
pub async fn probe(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&TlsProbeConfig>,
    proxy: &ProxySettings,
) -> Result<(), Reason> {
    let attempt = async {
        match check.kind {
            HealthKind::None => Ok(()),
            HealthKind::Tcp => {
                let mut stream = connect_direct(addr).await?;
                send_header(check, &mut stream, true).await
            }
            HealthKind::Http => http_probe(check, addr, None, proxy).await,
            HealthKind::Https => match tls {
                Some(tls) => http_probe(check, addr, Some(tls), proxy).await,
                None => Err(Reason::Tls(
                    "no TLS settings for this https check".to_owned(),
                )),
            },
        }
    };
    tokio::time::timeout(check.timeout, attempt)
        .await
        .unwrap_or(Err(Reason::Timeout(check.timeout)))
}

/// The name a probe is about: the `host` setting without port, else the
/// backend's IP. Decides the proxy and is the default TLS server name.
pub fn probed_name(check: &HealthCheck, addr: SocketAddr) -> String {
    match &check.host {
        Some(host) => host_name(host).to_owned(),
        None => addr.ip().to_string(),
    }
}

/// `node1:8081` → `node1`, `[::1]:443` → `::1`.
fn host_name(host: &str) -> &str {
    split_host_port(host).0
}

async fn http_probe(
    check: &HealthCheck,
    addr: SocketAddr,
    tls: Option<&TlsProbeConfig>,
    proxy: &ProxySettings,
) -> Result<(), Reason> {
    let https = tls.is_some();
    let proxy = proxy.proxy_for(https, &probed_name(check, addr), addr.ip());
    let mut stream = match &proxy {
        None => connect_direct(addr).await?,
        Some(proxy) => connect_proxy(proxy).await?,
    };
    // A PROXY header must reach the backend itself: through a proxy, even
    // plain HTTP then goes through a CONNECT tunnel.
    let tunnel = https || check.send_proxy.is_some();
    // Absolute form only for plain HTTP through a proxy without a tunnel;
    // a tunnel carries the origin form.
    let target = match (&proxy, tunnel) {
        (Some(_), false) => format!("http://{addr}{}", check.path),
        _ => check.path.clone(),
    };
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .header(HOST, host)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| {
            Reason::Http(format!(
                "cannot build the request (check path and host): {e}"
            ))
        })?;
    if let Some(proxy) = proxy.as_ref().filter(|_| tunnel) {
        open_tunnel(&mut stream, proxy, addr).await?;
    }
    send_header(check, &mut stream, proxy.is_none()).await?;
    match tls {
        None => exchange(stream, request, check).await,
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server_name(addr.ip()), stream)
                .await
                .map_err(|e| Reason::Tls(error_chain(&e)))?;
            exchange(stream, request, check).await
        }
    }
}

/// With `send_proxy`: writes the probe's PROXY header (before any other
/// byte, TLS included). `direct`: the stream's own endpoints are the
/// backend's view of the probe (not a proxy's tunnel).
async fn send_header(
    check: &HealthCheck,
    stream: &mut TcpStream,
    direct: bool,
) -> Result<(), Reason> {
    let Some(version) = check.send_proxy else {
        return Ok(());
    };
    let endpoints = match (direct, stream.local_addr(), stream.peer_addr()) {
        (true, Ok(local), Ok(peer)) => Some((local, peer)),
        _ => None,
    };
    let header = probe_header(version, endpoints);
    stream
        .write_all(header.as_bytes())
        .await
        .map_err(|e| Reason::Connect(format!("writing the PROXY header: {e}")))
}

async fn connect_direct(addr: SocketAddr) -> Result<TcpStream, Reason> {
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        if let Some(local) = local(&e, &addr) {
            return local;
        }
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Reason::Refused,
            _ => Reason::Connect(e.to_string()),
        }
    })?;
    // Small request, small answer: don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_proxy(proxy: &ProxyAddr) -> Result<TcpStream, Reason> {
    let stream = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| {
            local(&e, &proxy)
                .unwrap_or_else(|| Reason::Proxy(format!("cannot connect to {proxy}: {e}")))
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// [`Reason::Local`] when connecting to `to` failed for a shortage of this
/// host (then counted in the local errors, logged at most once a second).
fn local(e: &std::io::Error, to: &dyn fmt::Display) -> Option<Reason> {
    LOCAL_ERRORS
        .record(
            e,
            &format_args!("probing {to} (the backend's health is left as it was)"),
        )
        .map(|_| Reason::Local(e.to_string()))
}

/// Asks the proxy for a tunnel to `addr` and reads its answer, leaving the
/// stream positioned at the first tunnelled byte.
async fn open_tunnel(
    stream: &mut TcpStream,
    proxy: &ProxyAddr,
    addr: SocketAddr,
) -> Result<(), Reason> {
    let request = format!(
        "CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {USER_AGENT_VALUE}\r\n\r\n"
    );
    let broken = |e: std::io::Error| Reason::Proxy(format!("{proxy}: CONNECT {addr}: {e}"));
    stream.write_all(request.as_bytes()).await.map_err(broken)?;
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let head_len = loop {
        let n = stream.read(&mut chunk).await.map_err(broken)?;
        if n == 0 {
            return Err(Reason::Proxy(format!(
                "{proxy} closed the connection before answering CONNECT {addr}"
            )));
        }
        answer.extend_from_slice(&chunk[..n]);
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if answer.len() > MAX_CONNECT_ANSWER {
            return Err(Reason::Proxy(format!(
                "{proxy}: answer to CONNECT is too long"
            )));
        }
    };
    // TLS lets the client speak first, so nothing may follow the answer yet.
    if head_len != answer.len() {
        return Err(Reason::Proxy(format!(
            "{proxy}: unexpected bytes after the answer to CONNECT {addr}"
        )));
    }
    match connect_status(&answer) {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(Reason::Proxy(format!(
            "{proxy} answered {code} to CONNECT {addr}"
        ))),
        None => Err(Reason::Proxy(format!(
            "{proxy}: malformed answer to CONNECT {addr}"
        ))),
    }
}

/// The status code of an `HTTP/1.x NNN reason` status line.
pub(crate) fn connect_status(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// Sends the request over `io`, reads the answer (body up to `max_body`)
/// and judges it.
async fn exchange<S>(
    io: S,
    request: Request<Empty<Bytes>>,
    check: &HealthCheck,
) -> Result<(), Reason>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Reason::Http(error_chain(&e)))?;
    let max_body = check.max_body;
    let answer = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Reason::Http(error_chain(&e)))?;
        let status = response.status().as_u16();
        if status != 200 {
            // The body of a failure is not needed: the status says it all.
            return Err(Reason::Status(status));
        }
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|len| len > max_body as u64) {
            return Err(Reason::BodyTooLarge(max_body));
        }
        let mut body = response.into_body();
        let mut read = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Reason::Http(error_chain(&e)))?;
            if let Ok(data) = frame.into_data() {
                if read.len() + data.len() > max_body {
                    return Err(Reason::BodyTooLarge(max_body));
                }
                read.extend_from_slice(&data);
            }
        }
        judge(status, &read, check.degraded)
    };
    // The connection future moves the bytes; it is driven here rather than
    // spawned, so that nothing outlives the probe's timeout.
    tokio::pin!(conn);
    tokio::pin!(answer);
    let mut conn_done = false;
    loop {
        tokio::select! {
            biased;
            judged = &mut answer => return judged,
            done = &mut conn, if !conn_done => {
                conn_done = true;
                done.map_err(|e| Reason::Http(error_chain(&e)))?;
            }
        }
    }
}

/// An error and its sources, `: `-separated, for one log line.
fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Verifies against the `ca_file` certificates as trust anchors, and accepts
/// a server certificate that is exactly one of them (pinning), so that the
/// file may hold the CA or the server's own certificate.
#[derive(Debug)]
struct CaOrPinned {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl CaOrPinned {
    fn new(path: &Path, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let shown = path.display();
        let pinned = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("ca_file {shown}: {e}"))?;
        if pinned.is_empty() {
            return Err(format!(
                "ca_file {shown}: no CERTIFICATE in it (expected PEM)"
            ));
        }
        let mut roots = RootCertStore::empty();
        for cert in &pinned {
            roots
                .add(cert.clone())
                .map_err(|e| format!("ca_file {shown}: unusable certificate: {e}"))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("ca_file {shown}: {e}"))?;
        Ok(CaOrPinned { webpki, pinned })
    }
}

impl ServerCertVerifier for CaOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `insecure_skip_verify`: any certificate is accepted; the handshake
/// signatures are still checked (the peer must hold the certificate's key).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// Hostile-input property tests (src/fuzz.rs).
#[cfg(test)]
#[path = "fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_connect_status_lines() {
        assert_eq!(
            connect_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            connect_status(b"HTTP/1.0 407 Proxy Auth\r\n\r\n"),
            Some(407)
        );
        assert_eq!(connect_status(b"HTTP/1.1 200\r\n\r\n"), Some(200));
        assert_eq!(connect_status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(connect_status(b"HTTP/1.1 20 x\r\n\r\n"), None);
        assert_eq!(connect_status(b"HTTP/1.1 abc x\r\n\r\n"), None);
        assert_eq!(connect_status(&[0xff, 0xfe, b'\n']), None);
        assert_eq!(connect_status(b""), None);
    }

    #[test]
    fn strips_ports_from_host_names() {
        assert_eq!(host_name("node1.cluster.test:8081"), "node1.cluster.test");
        assert_eq!(host_name("node1.cluster.test"), "node1.cluster.test");
        assert_eq!(host_name("[::1]:443"), "::1");
    }

    #[test]
    fn error_chain_joins_sources_without_repeating() {
        let inner = std::io::Error::other("reset");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "reset");
    }

    #[test]
    fn https_without_ca_or_opt_out_is_refused_with_advice() {
        let mut check = crate::health::tests::check(HealthKind::Https);
        check.ca_file = None;
        let err = TlsProbeConfig::new(&check).expect_err("no CA must be an error");
        assert!(
            err.contains("ca_file") && err.contains("insecure_skip_verify"),
            "{err}"
        );
    }

    #[test]
    fn missing_ca_file_is_named_in_the_error() {
        let mut check = crate::health::tests::check(HealthKind::Https);
        check.ca_file = Some("/nonexistent/ringlb-ca.pem".into());
        let err = TlsProbeConfig::new(&check).expect_err("missing file must be an error");
        assert!(err.contains("/nonexistent/ringlb-ca.pem"), "{err}");
    }

    #[test]
    fn bad_sni_is_an_error() {
        let mut check = crate::health::tests::check(HealthKind::Https);
        check.insecure_skip_verify = true;
        check.sni = Some("not a name!".into());
        assert!(TlsProbeConfig::new(&check).is_err());
    }
}
