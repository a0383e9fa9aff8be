//! Writing one metric family by hand, for the collectors that encode from
//! the agent's state at scrape time.

use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder},
    metrics::MetricType,
    registry::Unit,
};

pub const NO_LABELS: [(&str, &str); 0] = [];

/// Writes one family: one descriptor, then its rows.
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

    pub fn counter<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeCounterValue>(
        &mut self,
        labels: &L,
        value: V,
    ) -> fmt::Result {
        self.enc
            .encode_family(labels)?
            .encode_counter::<prometheus_client::encoding::NoLabelSet, V, u64>(&value, None)
    }

    pub fn gauge<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue>(
        &mut self,
        labels: &L,
        value: V,
    ) -> fmt::Result {
        self.enc.encode_family(labels)?.encode_gauge(&value)
    }
}
