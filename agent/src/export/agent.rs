//! The agent's own health: discovery, registry, eBPF counters.

use std::fmt;

use agent_common::counter;
use prometheus_client::{encoding::DescriptorEncoder, metrics::MetricType};

use super::{
    family::{Family, NO_LABELS},
    sources::Sources,
};
use crate::{discovery::load, events::EventType, registry::Snapshot};

pub fn encode(encoder: &mut DescriptorEncoder, s: &Sources, snapshot: &Snapshot) -> fmt::Result {
    let live = snapshot.live();
    let mut containers = Family::new(
        encoder,
        "cgscope_registry_containers",
        "Containers (cgroups) the registry knows, live or removed and kept for the retention period.",
        None,
        MetricType::Gauge,
    )?;
    containers.gauge(&[("state", "live")], live as i64)?;
    containers.gauge(
        &[("state", "removed")],
        (snapshot.containers.len() - live) as i64,
    )?;

    let d = &s.discovery;
    let mut events = Family::new(
        encoder,
        "cgscope_discovery_events",
        "cgroup creations and removals received from each event source.",
        None,
        MetricType::Counter,
    )?;
    for (source, event, v) in [
        ("ebpf", "mkdir", load(&d.ebpf_mkdir)),
        ("ebpf", "rmdir", load(&d.ebpf_rmdir)),
        ("inotify", "mkdir", load(&d.inotify_create)),
        ("inotify", "rmdir", load(&d.inotify_delete)),
    ] {
        events.counter(&[("source", source), ("event", event)], v)?;
    }
    let mut repairs = Family::new(
        encoder,
        "cgscope_discovery_repairs",
        "Containers the periodic walk had to add or remove because the event source missed them.",
        None,
        MetricType::Counter,
    )?;
    repairs.counter(&[("kind", "added")], load(&d.repairs_added))?;
    repairs.counter(&[("kind", "removed")], load(&d.repairs_removed))?;
    Family::new(
        encoder,
        "cgscope_discovery_walks",
        "Full walks of every cgroup hierarchy.",
        None,
        MetricType::Counter,
    )?
    .counter(&NO_LABELS, load(&d.walks))?;
    Family::new(
        encoder,
        "cgscope_inotify_overflows",
        "inotify queue overflows (each one triggers a rescan).",
        None,
        MetricType::Counter,
    )?
    .counter(&NO_LABELS, load(&d.inotify_overflows))?;
    let mut errors = Family::new(
        encoder,
        "cgscope_discovery_errors",
        "Discovery problems by reason; each reason is logged once.",
        None,
        MetricType::Counter,
    )?;
    for (reason, n) in d.errors.snapshot() {
        errors.counter(&[("reason", reason)], n)?;
    }

    let totals = s
        .events
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .totals()
        .clone();
    let mut lifecycle = Family::new(
        encoder,
        "cgscope_container_lifecycle_events",
        "Container creations and deletions seen, including containers shorter-lived than any interval.",
        None,
        MetricType::Counter,
    )?;
    for (label, t) in [
        ("creation", EventType::ContainerCreation),
        ("deletion", EventType::ContainerDeletion),
    ] {
        lifecycle.counter(&[("event", label)], totals.get(&t).copied().unwrap_or(0))?;
    }

    let h = &s.http;
    Family::new(
        encoder,
        "cgscope_scrapes",
        "Scrapes of /metrics served.",
        None,
        MetricType::Counter,
    )?
    .counter(&NO_LABELS, load(&h.scrapes))?;
    Family::new(
        encoder,
        "cgscope_scrapes_rejected",
        "Scrapes refused with 503 because too many were already being encoded.",
        None,
        MetricType::Counter,
    )?
    .counter(&NO_LABELS, load(&h.rejected))?;
    Family::new(
        encoder,
        "cgscope_last_scrape_duration_seconds",
        "Time the previous /metrics scrape took to encode.",
        None,
        MetricType::Gauge,
    )?
    .gauge(&NO_LABELS, load(&h.last_duration_ns) as f64 / 1e9)?;
    Family::new(
        encoder,
        "cgscope_last_scrape_size_bytes",
        "Size of the previous /metrics response before compression.",
        None,
        MetricType::Gauge,
    )?
    .gauge(&NO_LABELS, load(&h.last_bytes))?;

    let mut runtime = Family::new(
        encoder,
        "cgscope_runtime_errors",
        "Container runtime provider failures by provider (labels stay empty); each is logged once.",
        None,
        MetricType::Counter,
    )?;
    for (provider, n) in s.runtime_errors.snapshot() {
        runtime.counter(&[("provider", provider)], n)?;
    }

    let o = &s.oom;
    Family::new(
        encoder,
        "cgscope_oom_kills",
        "OOM kills seen by the OOM source (one per killed task).",
        None,
        MetricType::Counter,
    )?
    .counter(&NO_LABELS, load(&o.kills))?;
    Family::new(
        encoder,
        "cgscope_oom_unattributed_kills",
        "OOM kills whose container could not be determined.",
        None,
        MetricType::Counter,
    )?
    .counter(&NO_LABELS, load(&o.unattributed))?;
    let source = s
        .status
        .modes
        .iter()
        .find(|m| m.subsystem == "oom")
        .map_or("none", |m| m.active);
    Family::new(
        encoder,
        "cgscope_oom_missed",
        "OOM kills the kernel counted in a container's own cgroup (memory.events.local, v1 memory.oom_control) that the OOM source did not report within 5 s; container_oom_events_total includes them.",
        None,
        MetricType::Counter,
    )?
    .counter(&[("source", source)], load(&o.missed))?;
    let mut errors = Family::new(
        encoder,
        "cgscope_oom_errors",
        "OOM source problems by reason; each reason is logged once.",
        None,
        MetricType::Counter,
    )?;
    for (reason, n) in o.errors.snapshot() {
        errors.counter(&[("reason", reason)], n)?;
    }

    if let Some(c) = &s.collect {
        let st = &c.stats;
        Family::new(
            encoder,
            "cgscope_collections",
            "Container collections (one sample of one container each).",
            None,
            MetricType::Counter,
        )?
        .counter(&NO_LABELS, load(&st.collections))?;
        Family::new(
            encoder,
            "cgscope_collection_seconds",
            "Time spent collecting container statistics (wall time in the blocking pool).",
            None,
            MetricType::Counter,
        )?
        .counter(&NO_LABELS, load(&st.busy_ns) as f64 / 1e9)?;
        Family::new(
            encoder,
            "cgscope_collection_files_read",
            "cgroup and /proc files read by the collector.",
            None,
            MetricType::Counter,
        )?
        .counter(&NO_LABELS, load(&st.files_read))?;
        Family::new(
            encoder,
            "cgscope_collection_hung_threads",
            "Collector threads blocked in a read that hung (each such cgroup is skipped until its read returns).",
            None,
            MetricType::Gauge,
        )?
        .gauge(&NO_LABELS, load(&st.quarantined) as i64)?;
        let mut errors = Family::new(
            encoder,
            "cgscope_collection_errors",
            "Collection problems by reason (the value is absent for that sample); each reason is logged once.",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in c.errors.snapshot() {
            errors.counter(&[("reason", reason)], n)?;
        }
        if let Some(it) = &c.iter {
            let st = &it.stats;
            let mut passes = Family::new(
                encoder,
                "cgscope_collector_iter_passes",
                "eBPF cgroup iterator passes: over a whole hierarchy (shared by the containers due together) or rooted at one container.",
                None,
                MetricType::Counter,
            )?;
            passes.counter(&[("scope", "hierarchy")], load(&st.full_passes))?;
            passes.counter(&[("scope", "container")], load(&st.own_passes))?;
            Family::new(
                encoder,
                "cgscope_collector_iter_pass_seconds",
                "Wall time of the iterator's passes (the kernel holds cgroup_mutex during each).",
                None,
                MetricType::Counter,
            )?
            .counter(&NO_LABELS, load(&st.pass_ns) as f64 / 1e9)?;
            Family::new(
                encoder,
                "cgscope_collector_iter_cgroups",
                "cgroups read by the iterator's passes.",
                None,
                MetricType::Counter,
            )?
            .counter(&NO_LABELS, load(&st.records))?;
            Family::new(
                encoder,
                "cgscope_collector_iter_overflows",
                "Passes that met more cgroups than the iterator's output holds (the rest were read from files).",
                None,
                MetricType::Counter,
            )?
            .counter(&NO_LABELS, load(&st.overflows))?;
        }
    }
    let mut cache = Family::new(
        encoder,
        "cgscope_stats_cache_samples",
        "Samples in the stats cache: all, and distinct (equal neighbours share storage).",
        None,
        MetricType::Gauge,
    )?;
    cache.gauge(&[("kind", "all")], s.cache.samples() as i64)?;
    cache.gauge(&[("kind", "distinct")], s.cache.distinct_samples() as i64)?;

    if let Some(k) = &s.kernel {
        let mut prog = Family::new(
            encoder,
            "cgscope_ebpf_events",
            "Tracepoint hits counted by the eBPF programs themselves.",
            None,
            MetricType::Counter,
        )?;
        for (program, idx) in [
            ("cgroup_mkdir", counter::MKDIR_EVENTS),
            ("cgroup_rmdir", counter::RMDIR_EVENTS),
        ] {
            if let Some(v) = k.get(idx) {
                prog.counter(&[("program", program)], v)?;
            }
        }
        let mut drops = Family::new(
            encoder,
            "cgscope_ebpf_ringbuf_drops",
            "Events lost in the kernel because a ring buffer was full (the walk repairs them).",
            None,
            MetricType::Counter,
        )?;
        for (ring, idx) in [
            ("cgroup_events", counter::CGROUP_RINGBUF_DROPS),
            ("oom_events", counter::OOM_RINGBUF_DROPS),
        ] {
            if let Some(v) = k.get(idx) {
                drops.counter(&[("ringbuf", ring)], v)?;
            }
        }
        let mut read = Family::new(
            encoder,
            "cgscope_ebpf_read_errors",
            "Tracepoint records the eBPF programs could not read.",
            None,
            MetricType::Counter,
        )?;
        for (program, idx) in [
            ("cgroup", counter::CGROUP_READ_ERRORS),
            ("mark_victim", counter::OOM_READ_ERRORS),
        ] {
            if let Some(v) = k.get(idx) {
                read.counter(&[("program", program)], v)?;
            }
        }
    }
    Ok(())
}
