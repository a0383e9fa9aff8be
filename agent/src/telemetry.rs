//! The agent's own metrics. Each subsystem owns the prometheus-client
//! metrics it counts and registers them once, at start, into the one
//! registry that `/metrics` and `/metrics/agent` both end with. Values
//! that are a view of state (the cache's samples, the kernel's own
//! counters) are small collectors beside that state, encoded at scrape
//! time with [`Family`].

use std::fmt;

pub use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{counter::Counter, family::Family as Series, gauge::Gauge, MetricType},
    registry::Registry as Metrics,
};
use prometheus_client::{
    encoding::{EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder, NoLabelSet},
    registry::Unit,
};

pub const NO_LABELS: [(&str, &str); 0] = [];

/// A label set whose keys and values are all fixed in the code.
pub type Labels<const N: usize> = [(&'static str, &'static str); N];

/// A counter family keyed by fixed labels.
pub type Counters<const N: usize> = Series<Labels<N>, Counter>;

/// A seconds counter (the crate's `Counter<f64>` keeps its bits in an
/// `AtomicU64`).
pub type Seconds = Counter<f64, std::sync::atomic::AtomicU64>;

/// A gauge of fractional values.
pub type GaugeF64 = Gauge<f64, std::sync::atomic::AtomicU64>;

/// The counter of `family` for `labels`, created now so that it is
/// exported at 0 from the first scrape: a series that appears only with
/// its first increment hides that increment from `rate()`.
pub fn counter<const N: usize>(family: &Counters<N>, labels: Labels<N>) -> Counter {
    family.get_or_create_owned(&labels)
}

/// Writes one metric family by hand, for the collectors that encode from
/// the agent's state at scrape time: one descriptor, then its rows.
pub struct Family<'a> {
    enc: MetricEncoder<'a>,
}

impl<'a> Family<'a> {
    pub fn new(
        encoder: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
        unit: Option<&'a Unit>,
        ty: MetricType,
    ) -> Result<Self, fmt::Error> {
        Ok(Self {
            enc: encoder.encode_descriptor(name, help, unit, ty)?,
        })
    }

    pub fn counter<L: EncodeLabelSet, V: EncodeCounterValue>(
        &mut self,
        labels: &L,
        value: V,
    ) -> fmt::Result {
        self.enc
            .encode_family(labels)?
            .encode_counter::<NoLabelSet, V, u64>(&value, None)
    }

    pub fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
        &mut self,
        labels: &L,
        value: V,
    ) -> fmt::Result {
        self.enc.encode_family(labels)?.encode_gauge(&value)
    }
}
