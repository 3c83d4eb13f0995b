//! Test servers for the health-check tests, all on 127.0.0.1: an HTTP(S)
//! backend whose answer the test switches, a server that accepts and never
//! answers, a closed port, an HTTP proxy (absolute-form GET and CONNECT)
//! that counts what it forwards, and test certificates made with rcgen.
//! They run on the test's own (current-thread) tokio runtime.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What the test backend answers to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200, the router's JSON, everything HEALTHY.
    Healthy,
    /// 200, the router's JSON with `router.state = DEGRADED`.
    DegradedRouter,
    /// 200, the router's JSON with service `jfsvc@123` UNHEALTHY.
    UnhealthyService,
    /// 503 with a short text body.
    Unavailable,
    /// 200 with a body that starts like JSON and is cut short.
    GarbageJson,
    /// 200 `OK` as text/plain.
    PlainOk,
    /// 200 with a body that trickles a byte every 50 ms and never ends.
    EndlessBody,
    /// 200 with a body of `len` bytes, with a Content-Length.
    LargeBody(usize),
    /// 200 with a body of `len` bytes, chunked (no Content-Length).
    LargeChunked(usize),
}

/// The router's health JSON (as in the reference document), with the
/// router's and the service's states as given.
pub(crate) fn router_json(router: &str, service: &str) -> String {
    format!(
        r#"{{"router":{{"node_id":"abcef-1324-wxyz","state":"{router}","message":"OK"}},"services":[{{"service_id":"jfsvc@123","node_id":"hijkl-56789-mnopq","state":"{service}","message":"OK"}}]}}"#
    )
}

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub target: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub connection: Option<String>,
}

/// An HTTP or HTTPS backend on 127.0.0.1 whose answer can be switched.
pub(crate) struct Backend {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept: JoinHandle<()>,
}

impl Backend {
    /// A plain HTTP backend.
    pub(crate) async fn http(answer: Answer) -> Backend {
        Backend::start(answer, None).await
    }

    /// An HTTPS backend presenting `certs`' server certificate.
    pub(crate) async fn https(answer: Answer, certs: &TestCerts) -> Backend {
        Backend::start(answer, Some(certs.acceptor())).await
    }

    async fn start(answer: Answer, tls: Option<TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let answer = Arc::new(Mutex::new(answer));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (answer.clone(), seen.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, seen, tls) = (a.clone(), s.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(req, answer.clone(), seen.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    // Failed handshakes and broken connections are what some
                    // tests are about: ignored here.
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            answer,
            seen,
            accept,
        }
    }

    pub(crate) fn set(&self, answer: Answer) {
        *self.answer.lock().expect("answer lock") = answer;
    }

    /// Requests served so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type AnswerBody = BoxBody<Bytes, Infallible>;

async fn respond(
    req: Request<Incoming>,
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<AnswerBody>, Infallible> {
    let header = |name: http::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    seen.lock().expect("seen lock").push(Seen {
        target: req.uri().to_string(),
        host: header(http::header::HOST),
        user_agent: header(http::header::USER_AGENT),
        connection: header(http::header::CONNECTION),
    });
    let answer = *answer.lock().expect("answer lock");
    let full = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
        *response.status_mut() = status;
        response
    };
    Ok(match answer {
        Answer::Healthy => full(StatusCode::OK, router_json("HEALTHY", "HEALTHY")),
        Answer::DegradedRouter => full(StatusCode::OK, router_json("DEGRADED", "HEALTHY")),
        Answer::UnhealthyService => full(StatusCode::OK, router_json("HEALTHY", "UNHEALTHY")),
        Answer::Unavailable => full(
            StatusCode::SERVICE_UNAVAILABLE,
            "down for maintenance".into(),
        ),
        Answer::GarbageJson => full(StatusCode::OK, r#"{"router": {"state": "HEAL"#.into()),
        Answer::PlainOk => full(StatusCode::OK, "OK\n".into()),
        Answer::LargeBody(len) => full(StatusCode::OK, "x".repeat(len)),
        Answer::EndlessBody => Response::new(Drip::endless().boxed()),
        Answer::LargeChunked(len) => Response::new(Drip::chunks(len).boxed()),
    })
}

/// A body of unknown length (sent chunked): either a byte every 50 ms
/// forever, or a given length in 4 KiB chunks.
struct Drip {
    tick: Option<tokio::time::Interval>,
    chunks: VecDeque<Bytes>,
}

impl Drip {
    fn endless() -> Drip {
        Drip {
            tick: Some(tokio::time::interval(Duration::from_millis(50))),
            chunks: VecDeque::new(),
        }
    }

    fn chunks(len: usize) -> Drip {
        let chunk = Bytes::from(vec![b'x'; 4096]);
        let mut chunks: VecDeque<Bytes> = (0..len / 4096).map(|_| chunk.clone()).collect();
        chunks.push_back(Bytes::from(vec![b'x'; len % 4096]));
        Drip { tick: None, chunks }
    }
}

impl Body for Drip {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(tick) = self.tick.as_mut() {
            return match tick.poll_tick(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b" "))))),
            };
        }
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// A server that accepts connections and never says a word.
pub(crate) struct Silent {
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Silent {
    pub(crate) async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind silent");
        let addr = listener.local_addr().expect("silent address");
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Silent { addr, accept }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An address on 127.0.0.1 where nothing listens (bound, then closed).
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

/// A small HTTP proxy: absolute-form requests and CONNECT, every host
/// "resolved" to `upstream`. Counts and records what it forwards.
pub(crate) struct Proxy {
    pub addr: SocketAddr,
    /// Requests forwarded (GET and CONNECT alike).
    count: Arc<AtomicUsize>,
    /// Their request lines.
    lines: Arc<Mutex<Vec<String>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let count = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (c, l) = (count.clone(), lines.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (count, lines) = (c.clone(), l.clone());
                tokio::spawn(async move {
                    let _ = forward(stream, upstream, count, lines).await;
                });
            }
        });
        Proxy {
            addr,
            count,
            lines,
            accept,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    count: Arc<AtomicUsize>,
    lines: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(pos) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let line = text.lines().next().unwrap_or_default().to_owned();
    let mut parts = line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    lines.lock().expect("lines lock").push(line.clone());
    count.fetch_add(1, Ordering::SeqCst);
    let mut server = TcpStream::connect(upstream).await?;
    if method == "CONNECT" {
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        server.write_all(&head[end..]).await?;
    } else {
        // absolute form → origin form for the backend.
        let path = target
            .strip_prefix("http://")
            .and_then(|rest| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("/");
        let rewritten = text.replacen(target, path, 1);
        server.write_all(rewritten.as_bytes()).await?;
        server.write_all(&head[end..]).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// A CA and a server certificate it signed for `node1.cluster.test`,
/// `localhost` and 127.0.0.1, written as PEM files in a fresh directory.
pub(crate) struct TestCerts {
    pub dir: PathBuf,
    /// The CA's certificate.
    pub ca_file: PathBuf,
    /// The server's own certificate (to pin).
    pub server_cert_file: PathBuf,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl TestCerts {
    pub(crate) fn generate() -> TestCerts {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("ringlb-health-{id}"));
        std::fs::create_dir_all(&dir).expect("create cert dir");

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("ringlb test CA {id}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca.self_signed(&ca_key).expect("CA cert");

        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![
            "node1.cluster.test".to_owned(),
            "localhost".to_owned(),
        ])
        .expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "node1.cluster.test");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");

        let ca_file = dir.join("ca.pem");
        let server_cert_file = dir.join("server.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        std::fs::write(&server_cert_file, cert.pem()).expect("write server cert");
        TestCerts {
            dir,
            ca_file,
            server_cert_file,
            server_cert: cert.der().clone(),
            server_key: key.serialize_der(),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.server_cert.clone()], key)
            .expect("server TLS config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
