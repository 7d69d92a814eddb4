//! `gen_ai.client.operation.time_per_output_chunk`, aggregated here rather
//! than by the OpenTelemetry SDK.
//!
//! The metric takes one value per token after the first: 63 for a
//! 64-token answer. The SDK has no way to record many values at once, so
//! each was a lock, a bucket search and an unlock, and that was what
//! remained of tracing's end-to-end cost (the spans alone measured
//! nothing). Here a request's gaps go into a [`ChunkGaps`] under one lock,
//! as integer microseconds, and [`metric_message`] writes the cumulative
//! OTLP histogram the SDK would have written: same name, unit, bounds,
//! attributes and counts (a test records the same values through both).

use super::otlp_encode::attributes;
use super::protobuf::{LEN, double, fixed64, nested, string, tag, uint, varint};
use opentelemetry::KeyValue;

/// The semantic conventions' boundaries for GenAI durations, in seconds.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// [`SECONDS_BUCKETS`] in microseconds, where a gap is measured.
const BOUNDS_US: [u32; 14] = [
    10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 2_560_000, 5_120_000,
    10_240_000, 20_480_000, 40_960_000, 81_920_000,
];

/// One series' gaps so far: the counts per bucket (upper bound
/// inclusive, as OTLP defines them), the count, sum, min and max.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkGaps {
    buckets: [u64; BOUNDS_US.len() + 1],
    count: u64,
    sum_us: u64,
    min_us: u32,
    max_us: u32,
}

impl Default for ChunkGaps {
    fn default() -> Self {
        Self {
            buckets: [0; BOUNDS_US.len() + 1],
            count: 0,
            sum_us: 0,
            min_us: u32::MAX,
            max_us: 0,
        }
    }
}

impl ChunkGaps {
    /// One request's gaps between consecutive token chunks (µs).
    pub fn record(&mut self, gaps_us: &[u32]) {
        for &g in gaps_us {
            // Most gaps are far below the first bound: a scan from the
            // bottom ends at once.
            let i = BOUNDS_US
                .iter()
                .position(|&b| g <= b)
                .unwrap_or(BOUNDS_US.len());
            self.buckets[i] += 1;
            self.sum_us += u64::from(g);
            self.min_us = self.min_us.min(g);
            self.max_us = self.max_us.max(g);
        }
        self.count += gaps_us.len() as u64;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What a histogram metric is called and measures.
#[derive(Debug, Clone, Copy)]
pub struct Describe<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub unit: &'a str,
}

/// The metric with a data point per series that has values, as a
/// `ScopeMetrics.metrics` field (to go in an [`super::otlp_encode::Envelope`],
/// whose export request has the same shape for metrics as for spans).
/// Cumulative: every point counts from `start_unix_ns`. Writes nothing
/// when no series has a value.
pub fn metric_message<'s>(
    b: &mut Vec<u8>,
    what: Describe,
    start_unix_ns: u64,
    time_unix_ns: u64,
    series: impl IntoIterator<Item = (&'s [KeyValue], &'s ChunkGaps)>,
) {
    let mut series = series.into_iter().filter(|(_, g)| g.count > 0).peekable();
    if series.peek().is_none() {
        return;
    }
    nested(b, 2, |b| {
        string(b, 1, what.name);
        string(b, 2, what.description);
        string(b, 3, what.unit);
        // Metric.histogram = 9
        nested(b, 9, |b| {
            for (attrs, g) in series {
                nested(b, 1, |b| {
                    data_point(b, attrs, g, start_unix_ns, time_unix_ns)
                });
            }
            // AGGREGATION_TEMPORALITY_CUMULATIVE
            uint(b, 2, 2);
        });
    });
}

/// A `HistogramDataPoint`'s content.
fn data_point(b: &mut Vec<u8>, attrs: &[KeyValue], g: &ChunkGaps, start: u64, time: u64) {
    let seconds = |us: u64| us as f64 * 1e-6;
    fixed64(b, 2, start);
    fixed64(b, 3, time);
    fixed64(b, 4, g.count);
    double(b, 5, seconds(g.sum_us));
    // bucket_counts = 6 and explicit_bounds = 7, packed.
    tag(b, 6, LEN);
    varint(b, (g.buckets.len() * 8) as u64);
    for c in g.buckets {
        b.extend_from_slice(&c.to_le_bytes());
    }
    tag(b, 7, LEN);
    varint(b, (SECONDS_BUCKETS.len() * 8) as u64);
    for s in SECONDS_BUCKETS {
        b.extend_from_slice(&s.to_bits().to_le_bytes());
    }
    attributes(b, 9, attrs);
    double(b, 11, seconds(g.min_us.into()));
    double(b, 12, seconds(g.max_us.into()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::InstrumentationScope;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::ResourceMetrics;
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
    use prost::Message;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Keeps what the SDK would export, in the generated types.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<ExportMetricsServiceRequest>>>);

    impl PushMetricExporter for Capture {
        async fn export(&self, m: &ResourceMetrics) -> OTelSdkResult {
            self.0
                .lock()
                .unwrap()
                .push(ExportMetricsServiceRequest::from(m));
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    const WHAT: Describe = Describe {
        name: "gen_ai.client.operation.time_per_output_chunk",
        description: "Time between consecutive output chunks, for each chunk after the first.",
        unit: "s",
    };

    #[test]
    fn the_microsecond_bounds_are_the_conventions_seconds() {
        for (us, s) in BOUNDS_US.iter().zip(SECONDS_BUCKETS) {
            assert_eq!(f64::from(*us), (s * 1e6).round());
        }
    }

    #[test]
    fn a_gap_on_a_bound_counts_in_the_bucket_below_it() {
        let mut g = ChunkGaps::default();
        g.record(&[0, 10_000, 10_001]);
        g.record(&[81_920_000, 81_920_001, u32::MAX]);
        g.record(&[]);
        let mut want = [0; 15];
        want[0] = 2;
        want[1] = 1;
        want[13] = 1;
        want[14] = 2;
        assert_eq!(g.buckets, want);
        assert_eq!(g.count(), 6);
        assert_eq!(g.min_us, 0);
        assert_eq!(g.max_us, u32::MAX);
        let sum = 10_000 + 10_001 + 81_920_000 + 81_920_001 + u64::from(u32::MAX);
        assert_eq!(g.sum_us, sum);
    }

    /// The same gaps recorded through an SDK histogram (as llmload did
    /// before) and through [`ChunkGaps`], then exported: the two export
    /// requests are the same message, but for the sum's last bits (the
    /// SDK adds seconds, this adds microseconds).
    #[test]
    fn exports_what_the_sdk_histogram_exports() {
        let capture = Capture::default();
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("service.name", "t")])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.41.0")
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(capture.clone()).build())
            .with_resource(resource.clone())
            .build();
        let sdk = provider
            .meter("llmload")
            .f64_histogram(WHAT.name)
            .with_unit(WHAT.unit)
            .with_description(WHAT.description)
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build();
        // Sorted by key, as the SDK keeps a data point's attributes.
        let a: Vec<KeyValue> = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "m"),
            KeyValue::new("server.port", 8000_i64),
        ];
        let mut b = a.clone();
        b.insert(2, KeyValue::new("gen_ai.response.model", "m-2025"));
        let requests: [(&[KeyValue], Vec<u32>); 4] = [
            (&a, vec![1_500, 20, 999_999, 3]),
            (&b, vec![12_345, 7]),
            (&a, (1..=63).map(|i| i * 997).collect()),
            (&b, vec![90_000_000, 5_000_001]),
        ];
        let mut ours = [ChunkGaps::default(), ChunkGaps::default()];
        for (attrs, gaps) in &requests {
            for g in gaps {
                sdk.record(f64::from(*g) * 1e-6, attrs);
            }
            ours[usize::from(attrs.len() == 4)].record(gaps);
        }
        provider.force_flush().unwrap();
        let mut want = capture.0.lock().unwrap().pop().expect("exported");
        let Some(Data::Histogram(h)) =
            &mut want.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("not a histogram")
        };
        // The SDK's order of data points is a hash map's.
        h.data_points.sort_by_key(|p| p.attributes.len());
        let (start, time) = (
            h.data_points[0].start_time_unix_nano,
            h.data_points[0].time_unix_nano,
        );
        let sums: Vec<f64> = h
            .data_points
            .iter_mut()
            .map(|p| p.sum.take().unwrap())
            .collect();

        let mut metrics = Vec::new();
        metric_message(
            &mut metrics,
            WHAT,
            start,
            time,
            [(&a[..], &ours[0]), (&b[..], &ours[1])],
        );
        let body = super::super::otlp_encode::Envelope::new(
            &resource,
            &InstrumentationScope::builder("llmload").build(),
        )
        .request(&metrics);
        let mut got = ExportMetricsServiceRequest::decode(&body[..]).expect("valid protobuf");
        let Some(Data::Histogram(h)) =
            &mut got.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("not a histogram")
        };
        for (p, want) in h.data_points.iter_mut().zip(&sums) {
            let sum = p.sum.take().unwrap();
            assert!((sum - want).abs() < 1e-9, "{sum} vs {want}");
        }
        assert_eq!(got, want);
    }

    #[test]
    fn series_without_values_write_nothing() {
        let mut b = Vec::new();
        metric_message(&mut b, WHAT, 1, 2, [(&[][..], &ChunkGaps::default())]);
        assert!(b.is_empty());
    }
}
