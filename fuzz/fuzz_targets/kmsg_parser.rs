//! The kernel-log OOM parser on arbitrary bytes: records, lines, garbage.
#![no_main]

// The parser has no dependencies, so it is compiled in directly rather
// than through the agent crate (whose dependencies would all be built with
// sanitizers).
#[allow(dead_code)]
#[path = "../../agent/src/oom/parser.rs"]
mod parser;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut p = parser::Parser::new();
    for line in text.split('\n') {
        let report = match parser::parse_record(line) {
            Some(r) => p.feed(r.msg, Some(r.ts_us)),
            None => p.feed(line, None),
        };
        if let Some(r) = report {
            // What the agent relies on: a named task and absolute paths.
            assert!(r.task_memcg.as_deref().is_none_or(|p| p.starts_with('/')));
            assert!(r.oom_memcg.as_deref().is_none_or(|p| p.starts_with('/')));
        }
    }
});
