//! Scrape latency and payload at 100, 1,000 and 5,000 containers, in both
//! exposition formats (target: p99 under 50 ms at 1,000).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    collect::{metric, Fleet},
    percentile, BenchAgent,
};

const SCRAPES: usize = 40;

pub fn run(bin: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for n in [100, 1000, 5000] {
        eprintln!("bench scrape: {n} cgroups");
        let fleet = Fleet::new(n, 1)?;
        let agent = BenchAgent::start(bin, &[])?;
        for _ in 0..120 {
            if metric(&agent, "cgscope_collections_total") >= n as f64 {
                break;
            }
            thread::sleep(Duration::from_millis(500));
        }
        for (format, accept) in [
            ("text 0.0.4", "text/plain"),
            ("OpenMetrics", "application/openmetrics-text;version=1.0.0"),
        ] {
            let client: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into();
            let mut times = Vec::with_capacity(SCRAPES);
            let mut bytes = 0;
            for _ in 0..SCRAPES {
                let start = Instant::now();
                let body = client
                    .get(&format!("http://127.0.0.1:{}/metrics", agent.port))
                    .header("Accept", accept)
                    .call()?
                    .body_mut()
                    .with_config()
                    .limit(1 << 30)
                    .read_to_string()?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
                bytes = body.len();
            }
            times.sort_by(f64::total_cmp);
            rows.push((
                n,
                format,
                percentile(&times, 50.0),
                percentile(&times, 99.0),
                bytes,
            ));
        }
        drop(agent);
        drop(fleet);
    }
    println!();
    println!("scrape latency ({SCRAPES} scrapes each, uncompressed; target: p99 < 50 ms at 1,000 containers)");
    println!("| containers | format | p50 ms | p99 ms | payload KiB |");
    println!("|---|---|---|---|---|");
    for (n, format, p50, p99, bytes) in rows {
        println!(
            "| {n} | {format} | {p50:.1} | {p99:.1} | {} |",
            bytes / 1024
        );
    }
    Ok(())
}
