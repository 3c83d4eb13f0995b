//! Network namespaces the tests make for themselves (as root): one
//! namespace with its loopback up ([`Netns`]), and a three-namespace
//! topology ([`Topology`]) of clients, ringlb and backends joined by veth
//! pairs, with nftables rules and tbf queues to break the links. Every
//! namespace is deleted on drop (its veths and rules go with it), names
//! are unique per test process. Where namespaces cannot be made the
//! caller skips with the reason.
//!
//! Runs on the test's thread; [`Netns::run`] runs a closure on a thread
//! that joined the namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::process::Command;

/// Runs `cmd args`; the error says what failed and why.
pub fn run_cmd(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e} (install iproute2 and nftables)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace made for one test, removed on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes `name` with its loopback up and `sysctls` set; Err (with the
    /// reason) where namespaces cannot be made.
    pub fn make(name: &str, sysctls: &[String]) -> Result<Netns, String> {
        let _ = run_cmd("ip", &["netns", "del", name]);
        run_cmd("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        for s in sysctls {
            ns.exec("sysctl", &["-qw", s])?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_cmd("ip", &all)
    }

    /// `ip netns exec NAME cmd args`.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, cmd];
        all.extend_from_slice(args);
        run_cmd("ip", &all)
    }

    /// Runs `body` on a thread that joined the namespace (its sockets, its
    /// child processes and the threads it starts are in it).
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    // SAFETY: setns(2) with a namespace fd we own; it only
                    // changes this thread's network namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
                    body()
                })
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Replaces this namespace's fault rules (table `inet fault`) with
    /// `rules`, each a rule for both the input and the output hook
    /// (`numgen random mod 100 < 2 drop`, `ip daddr 10.0.0.1 drop`, …).
    pub fn set_faults(&self, rules: &[&str]) -> Result<(), String> {
        let mut script = String::from(
            "table inet fault\ndelete table inet fault\ntable inet fault {\n\
             chain input { type filter hook input priority 0; }\n\
             chain output { type filter hook output priority 0; }\n}\n",
        );
        for rule in rules {
            script.push_str(&format!(
                "add rule inet fault input {rule}\nadd rule inet fault output {rule}\n"
            ));
        }
        let path = std::env::temp_dir().join(format!(
            "ringlb-nft-{}-{}.nft",
            std::process::id(),
            self.name
        ));
        std::fs::write(&path, script).map_err(|e| format!("write {}: {e}", path.display()))?;
        let result = self.exec("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        result
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Clients' sources: 10.201.1.2 ..= 10.201.1.9 (namespace `client`).
pub const CLIENT_SOURCES: usize = 8;
/// ringlb's address on the clients' link.
pub const LB_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
/// ringlb's address on the backends' link.
pub const LB_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);

/// client ⇄ lb ⇄ backends: three namespaces, a veth `vc` between client
/// and lb (10.201.1.0/24), a veth `vb` between lb and backends
/// (10.201.2.0/24). The backends' namespace has one address per backend
/// (10.201.2.2, .3, …) so a rule can break one backend and not the others.
pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub backends: Netns,
    /// How many backend addresses were made.
    backend_count: u8,
}

impl Topology {
    /// Makes the namespaces `ringlb-<tag>-<pid>-{c,l,b}` with
    /// `backend_count` backend addresses; Err with the reason if it cannot.
    pub fn make(tag: &str, backend_count: u8) -> Result<Topology, String> {
        let base = format!("ringlb-{tag}-{}", std::process::id());
        let client = Netns::make(&format!("{base}-c"), &[])?;
        let lb = Netns::make(&format!("{base}-l"), &[])?;
        let backends = Netns::make(&format!("{base}-b"), &[])?;
        lb.ip(&[
            "link",
            "add",
            "vc",
            "type",
            "veth",
            "peer",
            "name",
            "vc",
            "netns",
            client.name(),
        ])?;
        lb.ip(&[
            "link",
            "add",
            "vb",
            "type",
            "veth",
            "peer",
            "name",
            "vb",
            "netns",
            backends.name(),
        ])?;
        lb.ip(&["addr", "add", &format!("{LB_CLIENT_SIDE}/24"), "dev", "vc"])?;
        lb.ip(&["addr", "add", &format!("{LB_BACKEND_SIDE}/24"), "dev", "vb"])?;
        for i in 0..CLIENT_SOURCES {
            let a = format!("10.201.1.{}/24", i + 2);
            client.ip(&["addr", "add", &a, "dev", "vc"])?;
        }
        for i in 0..backend_count {
            let a = format!("10.201.2.{}/24", i + 2);
            backends.ip(&["addr", "add", &a, "dev", "vb"])?;
        }
        for (ns, dev) in [(&lb, "vc"), (&lb, "vb"), (&client, "vc"), (&backends, "vb")] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(Topology {
            client,
            lb,
            backends,
            backend_count,
        })
    }

    /// The address of backend `i` (0-based).
    pub fn backend_ip(&self, i: u8) -> IpAddr {
        assert!(
            i < self.backend_count,
            "backend {i} of {}",
            self.backend_count
        );
        IpAddr::V4(Ipv4Addr::new(10, 201, 2, i + 2))
    }

    /// The client sources.
    pub fn client_sources(&self) -> Vec<IpAddr> {
        (0..CLIENT_SOURCES as u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 201, 1, i + 2)))
            .collect()
    }

    /// A tbf bandwidth cap of `rate` (e.g. "50mbit") on both ends of both
    /// links, queueing up to `latency` (e.g. "30ms") before it drops.
    pub fn cap(&self, rate: &str, latency: &str) -> Result<(), String> {
        for (ns, dev) in [
            (&self.lb, "vc"),
            (&self.lb, "vb"),
            (&self.client, "vc"),
            (&self.backends, "vb"),
        ] {
            ns.exec(
                "tc",
                &[
                    "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "64kb",
                    "latency", latency,
                ],
            )?;
        }
        Ok(())
    }

    /// Removes the caps of [`Topology::cap`].
    pub fn uncap(&self) -> Result<(), String> {
        for (ns, dev) in [
            (&self.lb, "vc"),
            (&self.lb, "vb"),
            (&self.client, "vc"),
            (&self.backends, "vb"),
        ] {
            ns.exec("tc", &["qdisc", "del", "dev", dev, "root"])?;
        }
        Ok(())
    }
}

/// The message a test prints when it cannot make namespaces.
pub fn skipped(test: &str, why: &str) {
    println!("{test}: SKIPPED: cannot make network namespaces ({why}); run as root with iproute2 and nftables");
}
