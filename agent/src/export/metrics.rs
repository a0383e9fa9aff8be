//! The scrape-time collector: every family is encoded from the agent's state
//! when Prometheus asks, so nothing per container outlives its state.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector, encoding::DescriptorEncoder, metrics::MetricType, registry::Registry,
};

use super::sources::Sources;
use crate::{
    machine::MachineInfo,
    telemetry::{Family, NO_LABELS},
};

/// Which families a collector writes. `/metrics` is encoded in parts on
/// threads of their own at once and the texts joined (no family spans
/// two), so a scrape of thousands of containers takes half as long; the
/// memory families are about half of the bytes. The agent's own metrics
/// are the last part of both `/metrics` and `/metrics/agent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but the agent's own metrics (tests).
    #[cfg(test)]
    Whole,
    /// Machine, container lifecycle, and every statistics family but memory.
    First,
    /// Memory.
    Memory,
    /// The machine only (`/metrics/agent`).
    Machine,
}

/// cAdvisor's families, encoded from the machine, the registry and the
/// stats cache at each scrape.
#[derive(Debug)]
pub struct CadvisorFamilies {
    sources: Arc<Sources>,
    part: Part,
}

/// The registries behind `/metrics` and `/metrics/agent`, each a list of
/// parts encoded in order; `own` holds the agent's own metrics, as their
/// owners registered them.
pub fn registries(sources: Arc<Sources>, own: Registry) -> (Parts, Parts) {
    let part = |part| {
        let mut r = Registry::default();
        r.register_collector(Box::new(CadvisorFamilies {
            sources: sources.clone(),
            part,
        }));
        Arc::new(r)
    };
    let own = Arc::new(own);
    (
        vec![part(Part::First), part(Part::Memory), own.clone()].into(),
        vec![part(Part::Machine), own].into(),
    )
}

/// Registries encoded one after the other into one response.
pub type Parts = Arc<[Arc<Registry>]>;

/// All of cAdvisor's families in one registry.
#[cfg(test)]
pub fn registry(sources: Sources) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(CadvisorFamilies {
        sources: Arc::new(sources),
        part: Part::Whole,
    }));
    r
}

impl Collector for CadvisorFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use super::stats::Families;
        if self.part != Part::Memory {
            let machine = self.sources.machine.borrow().clone();
            encode_machine(&mut encoder, machine.as_deref())?;
        }
        if self.part == Part::Machine {
            return Ok(());
        }
        let snapshot = self.sources.registry.borrow().clone();
        let latest = self.sources.cache.latest_all();
        let containers = super::containers::labeled(&snapshot);
        let s = &self.sources;
        if self.part != Part::Memory {
            super::containers::encode(
                &mut encoder,
                &containers,
                std::time::SystemTime::now(),
                s.groups.oom_event,
            )?;
        }
        let families = match self.part {
            Part::First => Families::AllButMemory,
            Part::Memory => Families::Memory,
            _ => Families::All,
        };
        super::stats::encode(
            &mut encoder,
            &containers,
            &latest,
            &s.groups,
            &s.devices,
            families,
        )
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

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::{prometheus_text, text};

    use super::*;
    use crate::registry::Snapshot;

    fn sources(machine: Option<MachineInfo>) -> Sources {
        let cache = crate::cache::StatsCache::new(
            std::time::Duration::from_secs(120),
            std::time::Duration::from_secs(10),
        );
        Sources::for_tests(
            machine,
            Snapshot::default(),
            Arc::new(cache),
            crate::config::Groups::kubelet(),
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

    #[test]
    fn the_agents_own_metrics_end_both_endpoints_once() {
        let mut own = Registry::default();
        own.register(
            "cgscope_demo",
            "Registered once",
            crate::telemetry::Counter::<u64>::default(),
        );
        let (all, agent) = registries(Arc::new(sources(Some(machine()))), own);
        let text = |parts: &[Arc<Registry>]| {
            parts
                .iter()
                .map(|r| {
                    let mut t = String::new();
                    text::encode_registry(&mut t, r).unwrap();
                    t
                })
                .collect::<String>()
        };
        for parts in [&all, &agent] {
            let t = text(parts);
            assert_eq!(t.matches("\ncgscope_demo_total 0\n").count(), 1, "{t}");
            assert_eq!(t.matches("# TYPE machine_cpu_cores ").count(), 1, "{t}");
        }
        // Last, in a part of its own.
        assert!(text(&all[all.len() - 1..]).starts_with("# HELP cgscope_demo"));
    }
}
