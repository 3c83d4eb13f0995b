//! IPv6: a `[::1]:0` listen address works end to end, beside an IPv4 one,
//! to an IPv6 backend.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};

use crate::harness::{
    self, connect_from, for_each_engine, read_line, seeded_bytes, Backend, LbConfig, Ringlb,
    LOCALHOST,
};

const V6_LOCALHOST: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

#[test]
fn ipv6_listen_address_works_end_to_end() {
    let _shared = harness::shared();
    if let Err(e) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        println!("ipv6: SKIPPED: cannot bind [::1]: {e}");
        return;
    }
    for_each_engine("ipv6", |engine| {
        let backend = Backend::named_on("v6", V6_LOCALHOST);
        let mut config = LbConfig::over(engine, &[&backend]);
        config.service().listen = vec!["[::1]:0".to_owned(), "127.0.0.1:0".to_owned()];
        let lb = Ringlb::start(&config);

        let addrs = lb.addrs("web");
        let v6 = addrs
            .iter()
            .find(|a| a.is_ipv6())
            .copied()
            .unwrap_or_else(|| panic!("[{engine}] no IPv6 listener among {addrs:?}"));
        let v4 = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .copied()
            .unwrap_or_else(|| panic!("[{engine}] no IPv4 listener among {addrs:?}"));
        assert_eq!(v6.ip(), V6_LOCALHOST);

        round_trip(engine, V6_LOCALHOST, v6);
        round_trip(engine, LOCALHOST, v4);
    });
}

fn round_trip(engine: &str, src: IpAddr, lb: SocketAddr) {
    let mut client =
        connect_from(src, lb).unwrap_or_else(|e| panic!("[{engine}] connect to {lb}: {e}"));
    let name = read_line(&mut client).unwrap_or_else(|e| panic!("[{engine}] via {lb}: {e}"));
    assert_eq!(name, "v6", "[{engine}] via {lb}");
    let data = seeded_bytes(6, 64 * 1024);
    client.write_all(&data).expect("send");
    let mut echo = vec![0u8; data.len()];
    client
        .read_exact(&mut echo)
        .unwrap_or_else(|e| panic!("[{engine}] echo via {lb}: {e}"));
    assert!(echo == data, "[{engine}] echo via {lb} corrupted");
}
