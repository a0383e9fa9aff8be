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
