//! Scrape latency and payload at 100, 1,000 and 5,000 containers, in both
//! exposition formats (target: p99 under 50 ms at 1,000).

use std::{path::Path, process::Command, thread, time::Duration};

use anyhow::{bail, Context as _, Result};

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
            let mut times = Vec::with_capacity(SCRAPES);
            let mut server = Vec::with_capacity(SCRAPES);
            let mut bytes = 0;
            for _ in 0..SCRAPES {
                // curl, an optimised client, as the scraper: this crate's
                // debug-built HTTP client took longer to read 6 MB than the
                // agent took to encode them.
                let out = Command::new("curl")
                    .args(["-sS", "-o", "/dev/null", "-H"])
                    .arg(format!("Accept: {accept}"))
                    .args(["-w", "%{time_total} %{size_download}"])
                    .arg(format!("http://127.0.0.1:{}/metrics", agent.port))
                    .output()
                    .context("the scrape benchmark runs curl")?;
                if !out.status.success() {
                    bail!("curl: {}", String::from_utf8_lossy(&out.stderr));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let mut w = text.split_whitespace();
                let (Some(Ok(seconds)), Some(Ok(size))) = (
                    w.next().map(str::parse::<f64>),
                    w.next().map(str::parse::<usize>),
                ) else {
                    bail!("curl printed {text:?}");
                };
                times.push(seconds * 1e3);
                bytes = size;
                // The agent's own time for that scrape (it reports the
                // previous one), without the transfer and the client.
                server.push(metric(&agent, "cgscope_last_scrape_duration_seconds") * 1e3);
            }
            times.sort_by(f64::total_cmp);
            server.sort_by(f64::total_cmp);
            rows.push((
                n,
                format,
                percentile(&times, 50.0),
                percentile(&times, 99.0),
                percentile(&server, 50.0),
                percentile(&server, 99.0),
                bytes,
            ));
        }
        drop(agent);
        drop(fleet);
    }
    println!();
    println!("scrape latency ({SCRAPES} scrapes each, uncompressed; target: p99 < 50 ms at 1,000 containers)");
    println!("(server: the agent's encoding time alone, as it reports it)");
    println!(
        "| containers | format | p50 ms | p99 ms | server p50 ms | server p99 ms | payload KiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, format, p50, p99, s50, s99, bytes) in rows {
        println!(
            "| {n} | {format} | {p50:.1} | {p99:.1} | {s50:.1} | {s99:.1} | {} |",
            bytes / 1024
        );
    }
    Ok(())
}
