//! Every scrape in the tests is checked by clients nobody here wrote:
//! `promtool check metrics` (Prometheus) for the text format and
//! `prometheus_client`'s strict OpenMetrics parser (Python) for OpenMetrics.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

const OPENMETRICS_CHECK: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
seen = set()
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        key = (s.name, tuple(sorted(s.labels.items())))
        if key in seen:
            sys.exit("duplicate series: %r" % (key,))
        seen.add(key)
"#;

fn run(cmd: &mut Command, input: &str) -> Option<(bool, String)> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// A scrape that could not be validated makes its test a skipped one.
fn missing(tool: &str) {
    crate::skip(&format!(
        "{tool} is not installed, so a scrape was not validated (`cargo xtask test` installs it)"
    ));
}

/// The Prometheus text format, by promtool.
pub fn prometheus_text(body: &str) {
    match run(Command::new("promtool").args(["check", "metrics"]), body) {
        None => missing("promtool"),
        Some((true, _)) => {}
        Some((false, out)) => panic!("promtool check metrics rejects the exposition:\n{out}"),
    }
}

/// OpenMetrics, by the Python client's strict parser (plus a duplicate check
/// it does not do itself).
pub fn openmetrics(body: &str) {
    let probe = Command::new("python3")
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return missing("python3 prometheus_client");
    }
    match run(
        Command::new("python3").args(["-c", OPENMETRICS_CHECK]),
        body,
    ) {
        None => missing("python3"),
        Some((true, _)) => {}
        Some((false, out)) => {
            panic!("prometheus_client rejects the OpenMetrics exposition:\n{out}")
        }
    }
}
