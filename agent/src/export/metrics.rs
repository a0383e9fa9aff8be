//! The scrape-time collector: every family is encoded from the agent's state
//! when Prometheus asks, so nothing per container outlives its state.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector, encoding::DescriptorEncoder, metrics::MetricType, registry::Registry,
};

use super::{
    family::{Family, NO_LABELS},
    sources::Sources,
};
use crate::{machine::MachineInfo, status::Status};

/// Which families a collector writes. `/metrics` is encoded as two parts
/// on two threads at once and the texts joined (no family spans both), so
/// a scrape of thousands of containers takes half as long; the memory
/// families are about half of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Whole,
    /// Machine, container lifecycle, and every statistics family but memory.
    First,
    /// Memory, then the agent's own.
    Second,
}

#[derive(Debug)]
pub struct AgentCollector {
    sources: Arc<Sources>,
    /// Whether per-container families are included (`/metrics`) or only
    /// the machine and the agent's own (`/metrics/agent`).
    containers: bool,
    part: Part,
}

/// The registries behind `/metrics` (its parts, in order) and
/// `/metrics/agent`.
pub fn registries(sources: Arc<Sources>) -> (Vec<Registry>, Registry) {
    let parts = [Part::First, Part::Second]
        .into_iter()
        .map(|part| {
            let mut r = Registry::default();
            r.register_collector(Box::new(AgentCollector {
                sources: sources.clone(),
                containers: true,
                part,
            }));
            r
        })
        .collect();
    let mut agent = Registry::default();
    agent.register_collector(Box::new(AgentCollector {
        sources,
        containers: false,
        part: Part::Whole,
    }));
    (parts, agent)
}

/// All of `/metrics` in one registry.
#[cfg(test)]
pub fn registry(sources: Sources) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(AgentCollector {
        sources: Arc::new(sources),
        containers: true,
        part: Part::Whole,
    }));
    r
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use super::stats::Families;
        let first = self.part != Part::Second;
        let second = self.part != Part::First;
        if first {
            let machine = self.sources.machine.borrow().clone();
            encode_machine(&mut encoder, machine.as_deref())?;
        }
        let snapshot = self.sources.registry.borrow().clone();
        if self.containers {
            let latest = self.sources.cache.latest_all();
            let containers = super::containers::labeled(&snapshot);
            let stats = |encoder: &mut DescriptorEncoder, families| {
                let s = &self.sources;
                super::stats::encode(
                    encoder,
                    &containers,
                    &latest,
                    &s.groups,
                    &s.devices,
                    families,
                )
            };
            if first {
                super::containers::encode(
                    &mut encoder,
                    &containers,
                    std::time::SystemTime::now(),
                    self.sources.groups.oom_event,
                )?;
            }
            match self.part {
                Part::Whole => stats(&mut encoder, Families::All)?,
                Part::First => stats(&mut encoder, Families::AllButMemory)?,
                Part::Second => stats(&mut encoder, Families::Memory)?,
            }
        }
        if second {
            encode_status(&mut encoder, &self.sources.status)?;
            super::agent::encode(&mut encoder, &self.sources, &snapshot)?;
        }
        Ok(())
    }
}

fn encode_machine(encoder: &mut DescriptorEncoder, machine: Option<&MachineInfo>) -> fmt::Result {
    let mut err = Family::new(
        encoder,
        "machine_scrape_error",
        "1 if there was an error while getting machine metrics, 0 otherwise.",
        None,
        MetricType::Gauge,
    )?;
    err.gauge(&NO_LABELS, i64::from(machine.is_none()))?;
    let Some(m) = machine else { return Ok(()) };
    // cAdvisor's base labels, in its (sorted) order.
    let labels = [
        ("boot_id", m.boot_id.as_str()),
        ("machine_id", m.machine_id.as_str()),
        ("system_uuid", m.system_uuid.as_str()),
    ];
    let rows: [(&str, &str, u64); 5] = [
        (
            "machine_cpu_cores",
            "Number of logical CPU cores.",
            m.num_cores,
        ),
        (
            "machine_cpu_physical_cores",
            "Number of physical CPU cores.",
            m.num_physical_cores,
        ),
        (
            "machine_cpu_sockets",
            "Number of CPU sockets.",
            m.num_sockets,
        ),
        (
            "machine_memory_bytes",
            "Amount of memory installed on the machine.",
            m.memory_capacity,
        ),
        (
            "machine_swap_bytes",
            "Amount of swap memory available on the machine.",
            m.swap_capacity,
        ),
    ];
    for (name, help, value) in rows {
        Family::new(encoder, name, help, None, MetricType::Gauge)?.gauge(&labels, value)?;
    }
    Ok(())
}

fn encode_status(encoder: &mut DescriptorEncoder, status: &Status) -> fmt::Result {
    let mut build = Family::new(
        encoder,
        "cgscope_build_info",
        "A metric with a constant '1' value labeled by version and whether the eBPF object is embedded.",
        None,
        MetricType::Gauge,
    )?;
    let ebpf = if crate::ebpf::embedded_object().is_some() {
        "true"
    } else {
        "false"
    };
    build.gauge(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("ebpf_object", ebpf),
        ],
        1,
    )?;

    let mut mode = Family::new(
        encoder,
        "cgscope_mode",
        "1 for the mode each subsystem runs in, 0 for the modes it could run in but does not.",
        None,
        MetricType::Gauge,
    )?;
    for m in &status.modes {
        for choice in m.choices {
            mode.gauge(
                &[("subsystem", m.subsystem), ("mode", choice)],
                i64::from(*choice == m.active),
            )?;
        }
    }
    let mut progs = Family::new(
        encoder,
        "cgscope_ebpf_programs_attached",
        "Number of eBPF programs the agent has attached.",
        None,
        MetricType::Gauge,
    )?;
    progs.gauge(&NO_LABELS, status.ebpf_programs.len() as i64)
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::{prometheus_text, text};

    use super::*;
    use crate::{discovery::start::Mode as Discovery, registry::Snapshot, status::Mode};

    fn sources(machine: Option<MachineInfo>) -> Sources {
        let status = Status {
            modes: vec![Mode::of(Discovery::Inotify)],
            ebpf_programs: vec![],
        };
        let cache = crate::cache::StatsCache::new(
            std::time::Duration::from_secs(120),
            std::time::Duration::from_secs(10),
        );
        Sources::for_tests(
            machine,
            Snapshot::default(),
            Arc::new(cache),
            crate::config::Groups::kubelet(),
            status,
        )
    }

    fn machine() -> MachineInfo {
        MachineInfo {
            num_cores: 8,
            num_physical_cores: 4,
            num_sockets: 1,
            memory_capacity: 1 << 30,
            swap_capacity: 0,
            machine_id: "m\"id".into(),
            system_uuid: "uuid".into(),
            boot_id: "boot".into(),
        }
    }

    #[test]
    fn openmetrics_output() {
        let mut out = String::new();
        text::encode(&mut out, &registry(sources(Some(machine())))).unwrap();
        assert!(out.contains(
            "# HELP machine_cpu_cores Number of logical CPU cores.\n# TYPE machine_cpu_cores gauge\n\
             machine_cpu_cores{boot_id=\"boot\",machine_id=\"m\\\"id\",system_uuid=\"uuid\"} 8\n"
        ), "{out}");
        assert!(out.contains("machine_scrape_error 0\n"), "{out}");
        assert!(
            out.contains("cgscope_mode{subsystem=\"discovery\",mode=\"inotify\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("cgscope_mode{subsystem=\"discovery\",mode=\"ebpf\"} 0\n"),
            "{out}"
        );
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn prometheus_text_output_and_missing_machine() {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry(sources(None))).unwrap();
        assert!(out.contains("machine_scrape_error 1\n"), "{out}");
        assert!(!out.contains("machine_cpu_cores"), "{out}");
        assert!(!out.contains("# EOF"));
    }
}
