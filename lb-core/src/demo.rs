//! `ringlb demo`: two built-in demo backends on loopback that answer HTTP
//! (`/` says which node answered) and the cluster router's health endpoint,
//! plus the config that puts the balancer in front of them (on
//! 127.0.0.1:8080, the admin API on 127.0.0.1:9090, unless taken). The
//! backends run on their own thread with a current-thread tokio runtime and
//! hyper.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::oneshot;

/// Running demo backends; stopped on drop.
#[derive(Debug)]
pub struct DemoBackends {
    pub addrs: Vec<(String, SocketAddr)>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl DemoBackends {
    /// Starts `names.len()` backends on 127.0.0.1, on `first_port`,
    /// `first_port + 1`, … (0: ports chosen by the kernel).
    pub fn start(names: &[&str], first_port: u16) -> std::io::Result<DemoBackends> {
        let mut listeners = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let port = if first_port == 0 {
                0
            } else {
                first_port + i as u16
            };
            let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
            l.set_nonblocking(true)?;
            listeners.push((name.to_string(), l));
        }
        let addrs = listeners
            .iter()
            .map(|(n, l)| Ok((n.clone(), l.local_addr()?)))
            .collect::<std::io::Result<_>>()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("ringlb-demo".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "demo backends cannot start");
                        return;
                    }
                };
                rt.block_on(async move {
                    for (name, l) in listeners {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(serve(name, l));
                            }
                            Err(e) => tracing::error!(error = %e, "demo backend cannot listen"),
                        }
                    }
                    let _ = stopped.await;
                });
            })?;
        Ok(DemoBackends {
            addrs,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The ringlb config of the demo: balancer on `listen` over the
    /// backends, the admin API (status page, metrics) on `admin` or off.
    pub fn config_toml(&self, listen: SocketAddr, admin: Option<SocketAddr>) -> String {
        let admin = admin.map_or_else(|| "off".to_owned(), |a| a.to_string());
        let mut s = format!(
            "[global]\nworkers = \"auto\"\nadmin = \"{admin}\"\n\n[[service]]\nname = \"demo\"\nlisten = [\"{listen}\"]\nbalance = \"maglev\"\nconnect_timeout = \"1s\"\n\n[service.health]\nkind = \"http\"\ninterval = \"2s\"\ntimeout = \"1s\"\n"
        );
        for (name, addr) in &self.addrs {
            s.push_str(&format!(
                "\n[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n"
            ));
        }
        s
    }
}

impl Drop for DemoBackends {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(name: String, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper::service::service_fn(move |req| answer(name.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

async fn answer(name: String, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        crate::config::DEFAULT_HEALTH_PATH => (
            StatusCode::OK,
            "application/json",
            format!(
                r#"{{"router":{{"node_id":"{name}","state":"HEALTHY","message":"OK"}},"services":[{{"service_id":"demo@{name}","node_id":"{name}","state":"HEALTHY","message":"OK"}}]}}"#
            ),
        ),
        "/" => (StatusCode::OK, "text/plain", format!("Hello from {name}\n")),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}
