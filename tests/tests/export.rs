//! The exposition under odd input and abuse.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::Duration,
};

use tests::{
    cgroups::{wait_for, CgroupTree},
    require_root, Agent,
};

#[test]
fn odd_cgroup_names_are_escaped_in_both_formats() {
    if !require_root("odd_cgroup_names_are_escaped_in_both_formats") {
        return;
    }
    let agent = Agent::start(&["--housekeeping-interval", "1s"]);
    let tree = CgroupTree::new("names", &["pids"]);
    // cgroupfs refuses a newline in a name (EINVAL); quotes, backslashes
    // and spaces it takes.
    let odd = "quote\"back\\slash and space";
    tree.mkdir(odd).unwrap();
    let escaped = format!("{}/quote\\\"back\\\\slash and space", tree.prefix);
    wait_for(
        "the odd cgroup in /metrics",
        Duration::from_secs(10),
        || {
            // Both scrapes are validated by promtool and prometheus_client.
            let text = agent.scrape();
            let om = agent.scrape_openmetrics();
            text.0.contains(&format!("id=\"{escaped}\""))
                && om.0.contains(&format!("id=\"{escaped}\""))
        },
    );
}

#[test]
fn a_hundred_concurrent_scrapes_are_served_within_bounded_memory() {
    let agent = Agent::start(&["--discovery", "inotify", "--oom-source", "kmsg"]);
    let before = agent.rss_kib();
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let url = agent.url("/metrics");
            thread::spawn(move || {
                let a: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                a.get(&url).call().map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .collect();
    let codes: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 50,
        "{codes:?}"
    );
    let after = agent.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS {before} KiB -> {after} KiB"
    );
}

#[test]
fn huge_headers_and_slow_clients_do_not_stall_the_server() {
    let agent = Agent::start(&["--discovery", "inotify", "--oom-source", "kmsg"]);
    // A client that connects and sends nothing.
    let _slow = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    // A request with a 1 MiB header.
    let mut big = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let header = "x".repeat(1 << 20);
    let _ = big.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {header}\r\n\r\n").as_bytes(),
    );
    let mut reply = Vec::new();
    let _ = big.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 4"),
        "a 1 MiB header is refused: {}",
        reply.lines().next().unwrap_or_default()
    );
    // Everyone else is still served.
    let health = agent.get("/healthz", None).unwrap();
    assert_eq!(health.status, 200);
    let _ = agent.scrape();
}

/// One client holding hundreds of idle and half-sent connections (from
/// 127.0.0.2, loopback's second address) neither exhausts the agent's
/// descriptors nor keeps `/healthz` from answering another client; the
/// half-sent ones are closed by the server after its header-read timeout.
#[test]
fn a_client_holding_hundreds_of_connections_cannot_take_the_server_down() {
    use std::io::ErrorKind;
    let agent = Agent::start(&["--discovery", "inotify", "--oom-source", "kmsg"]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], agent.port));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hostile: Vec<std::net::TcpStream> = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..600 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(([127, 0, 0, 2], 0).into()).unwrap();
            let mut c = s.connect(addr).await.unwrap().into_std().unwrap();
            c.set_nonblocking(false).unwrap();
            if i % 2 == 0 {
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            held.push(c);
        }
        held
    });
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
            .unwrap()
            .count()
    };
    let r = agent.get("/healthz", None).expect("/healthz with 600 held");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(fds() < 1000, "{} descriptors open", fds());
    let m = agent.scrape_agent();
    let refused = m
        .value("cgscope_http_connections_refused_total", &[])
        .unwrap_or(0.0);
    assert!(refused >= 400.0, "refused {refused}");

    // Every held connection ends: refused at once, or closed by the
    // header-read timeout (5 s), never left open.
    for mut c in hostile {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a held connection still open after 20 s: {e}"),
        }
    }
    let r = agent.get("/healthz", None).expect("/healthz after");
    assert_eq!(r.status, 200);
}
