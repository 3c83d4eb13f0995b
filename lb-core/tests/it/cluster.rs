//! A running balancer in front of a 3-node cluster whose health the test
//! flips: only a failed node's clients move, nobody's new connection fails,
//! recovered nodes get their clients back, drain keeps established
//! connections. Real sockets on loopback; clients are distinct source
//! addresses 127.0.0.2 … 127.0.0.61.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lb_core::{AdminState, Config};
use lb_core::{Server, StartOptions};

use crate::support::loopback::try_connect_from;
use crate::support::wait::wait_within;

/// A cluster node: answers the health path with its current status, and any
/// other request with its name followed by an echo of each line it gets.
struct Node {
    name: String,
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    /// Traffic connections (not health probes) accepted.
    served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Node {
    fn start(name: &str) -> Node {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (n, st, sp, sv) = (
            name.to_string(),
            status.clone(),
            stop.clone(),
            served.clone(),
        );
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (n, st, sv) = (n.clone(), st.clone(), sv.clone());
                std::thread::spawn(move || serve(stream, &n, &st, &sv));
            }
        });
        Node {
            name: name.into(),
            addr,
            status,
            stop,
            served,
            thread: Some(thread),
        }
    }

    fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Closes the listener: the node is gone (connects are refused).
    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(stream: TcpStream, name: &str, status: &AtomicU16, served: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    if first.starts_with("GET /router/api/v1/system/health") {
        let code = status.load(Ordering::SeqCst);
        let body = if code == 200 {
            r#"{"router":{"node_id":"n","state":"HEALTHY","message":"OK"},"services":[]}"#
        } else {
            "unavailable"
        };
        let _ = write!(
            writer,
            "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    served.fetch_add(1, Ordering::SeqCst);
    if writeln!(writer, "{name}").is_err() {
        return;
    }
    // Echo every further line until EOF.
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        if writer.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

fn client_ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// Connects from `src` and returns the stream and the node's name.
fn open(src: IpAddr, to: SocketAddr) -> std::io::Result<(BufReader<TcpStream>, String)> {
    let stream = try_connect_from(src, to, Duration::from_secs(5))?;
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(b"GET / HTTP/1.0\r\n")?;
    let mut name = String::new();
    reader.read_line(&mut name)?;
    if name.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a name",
        ));
    }
    Ok((reader, name.trim().to_string()))
}

/// Which node each client reaches (one fresh connection each).
fn placement(clients: &[IpAddr], lb: SocketAddr) -> Result<BTreeMap<IpAddr, String>, String> {
    let mut out = BTreeMap::new();
    for &c in clients {
        let (_, name) = open(c, lb).map_err(|e| format!("client {c}: connection failed: {e}"))?;
        out.insert(c, name);
    }
    Ok(out)
}

struct Cluster {
    nodes: Vec<Node>,
    server: Server,
    lb: SocketAddr,
}

fn cluster(interval_ms: u64) -> Cluster {
    let nodes: Vec<Node> = ["n1", "n2", "n3"].iter().map(|n| Node::start(n)).collect();
    let mut toml = format!(
        r#"
[global]
workers = 2
engine = "epoll"
admin = "off"
[[service]]
name = "svc"
listen = ["127.0.0.1:0"]
connect_timeout = "500ms"
[service.health]
kind = "http"
interval = "{interval_ms}ms"
fast_interval = "{fast}ms"
timeout = "{interval_ms}ms"
rise = 2
fall = 2
jitter = 0.0
"#,
        fast = interval_ms / 2
    );
    for n in &nodes {
        toml.push_str(&format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            n.name, n.addr
        ));
    }
    let config = Config::parse(&toml, None).unwrap();
    let server = Server::start(config, StartOptions::default()).unwrap();
    let lb = server.listening()[0].1;
    Cluster { nodes, server, lb }
}

#[test]
fn a_failed_node_loses_only_its_clients_and_gets_them_back() {
    let c = cluster(100);
    let clients: Vec<IpAddr> = (2..=61).map(client_ip).collect();
    let before = placement(&clients, c.lb).unwrap();
    // Stable before anything happens.
    assert_eq!(placement(&clients, c.lb).unwrap(), before);
    let per_node = |p: &BTreeMap<IpAddr, String>| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for n in p.values() {
            *m.entry(n.clone()).or_default() += 1;
        }
        m
    };
    let counts = per_node(&before);
    assert_eq!(counts.len(), 3, "all three nodes get clients: {counts:?}");

    // Node n2 turns unhealthy. A client thread keeps opening connections
    // the whole time: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, attempts, lb, clients) = (
            stop.clone(),
            failures.clone(),
            attempts.clone(),
            c.lb,
            clients.clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                attempts.fetch_add(1, Ordering::SeqCst);
                if open(clients[i % clients.len()], lb).is_err() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        })
    };
    c.nodes[1].set_status(503);
    let n2_clients: Vec<IpAddr> = before
        .iter()
        .filter(|(_, n)| *n == "n2")
        .map(|(c, _)| *c)
        .collect();
    wait_within("n2's clients to move", Duration::from_secs(5), || {
        n2_clients
            .iter()
            .all(|&ip| open(ip, c.lb).map(|(_, n)| n != "n2").unwrap_or(false))
    });
    let during = placement(&clients, c.lb).unwrap();
    for (ip, node) in &before {
        if node == "n2" {
            assert_ne!(during[ip], "n2", "{ip} still on the failed node");
        } else {
            assert_eq!(
                &during[ip], node,
                "{ip} moved although its node {node} is healthy"
            );
        }
    }
    let moved = per_node(
        &during
            .iter()
            .filter(|(ip, _)| before[*ip] == "n2")
            .map(|(a, b)| (*a, b.clone()))
            .collect(),
    );
    assert_eq!(
        moved.len(),
        2,
        "n2's clients spread over both others: {moved:?}"
    );

    // n2 recovers: its clients come home.
    c.nodes[1].set_status(200);
    wait_within("n2's clients to come back", Duration::from_secs(5), || {
        n2_clients
            .iter()
            .all(|&ip| open(ip, c.lb).map(|(_, n)| n == "n2").unwrap_or(false))
    });
    assert_eq!(placement(&clients, c.lb).unwrap(), before);
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert!(attempts.load(Ordering::SeqCst) > 0);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "a new connection failed while nodes were up"
    );
}

#[test]
fn a_killed_node_costs_no_client_connection() {
    let mut c = cluster(200);
    let clients: Vec<IpAddr> = (2..=41).map(client_ip).collect();
    let before = placement(&clients, c.lb).unwrap();
    c.nodes[2].kill();
    // Right away (before any probe noticed), every client still gets
    // through: connects to n3 are refused and retried on the next node.
    let after = placement(&clients, c.lb).unwrap();
    for (ip, node) in &before {
        if node == "n3" {
            assert_ne!(after[ip], "n3");
        } else {
            assert_eq!(&after[ip], node, "{ip} moved although {node} is up");
        }
    }
}

#[test]
fn drain_keeps_established_connections_and_sends_no_new_ones() {
    let c = cluster(200);
    let clients: Vec<IpAddr> = (2..=41).map(client_ip).collect();
    let before = placement(&clients, c.lb).unwrap();
    let (ip, node) = before.iter().next().map(|(a, b)| (*a, b.clone())).unwrap();
    let (mut conn, name) = open(ip, c.lb).unwrap();
    assert_eq!(name, node);
    c.server
        .handle()
        .set_admin("svc", &node, AdminState::Drain)
        .unwrap();
    // New connections of its clients go elsewhere at once (the admin call
    // returns after publishing; workers pick it up within one turn).
    wait_within(
        "drained node to get no new connection",
        Duration::from_secs(2),
        || open(ip, c.lb).map(|(_, n)| n != node).unwrap_or(false),
    );
    let idx = c.nodes.iter().position(|n| n.name == node).unwrap();
    let served = c.nodes[idx].served.load(Ordering::SeqCst);
    for &other in before.iter().filter(|(_, n)| **n == node).map(|(ip, _)| ip) {
        assert_ne!(open(other, c.lb).unwrap().1, node);
    }
    assert_eq!(
        c.nodes[idx].served.load(Ordering::SeqCst),
        served,
        "drained node got a new connection"
    );
    // The established one keeps flowing both ways.
    for i in 0..5 {
        writeln!(conn.get_mut(), "line {i}").unwrap();
        let mut back = String::new();
        conn.read_line(&mut back).unwrap();
        assert_eq!(back, format!("line {i}\n"));
    }
    conn.get_mut().shutdown(Shutdown::Write).unwrap();
    c.server
        .handle()
        .set_admin("svc", &node, AdminState::Enabled)
        .unwrap();
    wait_within(
        "enabled node to get its clients back",
        Duration::from_secs(2),
        || open(ip, c.lb).map(|(_, n)| n == node).unwrap_or(false),
    );
}

/// Not an assertion of speed: measures how long after a node starts failing
/// its health check it still receives new connections, and prints it
/// (p50/max over trials) for the record.
#[test]
fn time_from_failure_to_last_new_connection() {
    let c = cluster(200);
    let clients: Vec<IpAddr> = (2..=41).map(client_ip).collect();
    let before = placement(&clients, c.lb).unwrap();
    let n1_clients: Vec<IpAddr> = before
        .iter()
        .filter(|(_, n)| *n == "n1")
        .map(|(ip, _)| *ip)
        .collect();
    assert!(!n1_clients.is_empty());
    let mut samples = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        c.nodes[0].set_status(503);
        let mut last_on_n1 = t0;
        let deadline = t0 + Duration::from_secs(5);
        let mut i = 0;
        // Keep connecting until n1 has been avoided for 300 ms in a row.
        while Instant::now() < deadline && last_on_n1.elapsed() < Duration::from_millis(300) {
            let (_, n) = open(n1_clients[i % n1_clients.len()], c.lb).unwrap();
            if n == "n1" {
                last_on_n1 = Instant::now();
            }
            i += 1;
        }
        samples.push(last_on_n1 - t0);
        c.nodes[0].set_status(200);
        wait_within("n1 back", Duration::from_secs(5), || {
            open(n1_clients[0], c.lb)
                .map(|(_, n)| n == "n1")
                .unwrap_or(false)
        });
    }
    samples.sort();
    eprintln!(
        "failure → last new connection (interval 200ms, fall 2): p50 {:?}, max {:?}, all {:?}",
        samples[samples.len() / 2],
        samples[samples.len() - 1],
        samples
    );
    assert!(samples[samples.len() - 1] < Duration::from_secs(2));
}
