//! One component's metrics: a Prometheus recorder of its own, and handles into it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Bucket bounds (seconds) of every `*_seconds` histogram: gRPC calls take from well under a
/// millisecond (a follower's redirect) to the long-poll limit.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds of every `*_commands` histogram (commands per Raft entry, up to
/// `proposals.max_batch`'s limit).
const COMMANDS_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 10000.0,
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// A set of metrics rendered together. Cloning shares it.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Names whose HELP line is recorded: described once, not at every call (the gRPC layer
    /// asks for its histogram on every request).
    described: Mutex<BTreeSet<&'static str>>,
}

impl Inner {
    fn first_use(&self, name: &'static str) -> bool {
        self.described
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|builder| {
                builder
                    .set_buckets_for_metric(Matcher::Suffix("_commands".into()), COMMANDS_BUCKETS)
            })
            // Only an empty bucket list is refused, and both lists above are constant.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        Registry {
            inner: Arc::new(Inner {
                recorder,
                handle,
                described: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The counter `name{labels}`, created on first use; `help` becomes its HELP line.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        let recorder = &self.inner.recorder;
        if self.inner.first_use(name) {
            recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
        }
        recorder.register_counter(&key(name, labels), &METADATA)
    }

    /// The gauge `name{labels}`, created on first use.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        let recorder = &self.inner.recorder;
        if self.inner.first_use(name) {
            recorder.describe_gauge(KeyName::from_const_str(name), None, help.into());
        }
        recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name{labels}`, created on first use. Names ending in `_seconds` or
    /// `_commands` get buckets; others are summaries.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        let recorder = &self.inner.recorder;
        if self.inner.first_use(name) {
            recorder.describe_histogram(KeyName::from_const_str(name), None, help.into());
        }
        recorder.register_histogram(&key(name, labels), &METADATA)
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Folds recorded histogram samples into their buckets; [`serve`](super::serve) calls it
    /// every few seconds so samples do not pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(label, value)| Label::new(*label, value.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_the_text_format() {
        let registry = Registry::new();
        registry
            .counter("scaleout_test_total", "Things counted.", &[("kind", "a")])
            .increment(3);
        registry
            .gauge("scaleout_test_depth", "A depth.", &[])
            .set(7.0);
        let seconds =
            registry.histogram("scaleout_test_seconds", "A duration.", &[("method", "M")]);
        seconds.record(0.003);
        seconds.record(0.2);
        registry
            .histogram("scaleout_test_batch_commands", "A batch size.", &[])
            .record(5.0);
        let text = registry.render();
        assert!(
            text.contains("# HELP scaleout_test_total Things counted."),
            "{text}"
        );
        assert!(text.contains("scaleout_test_total{kind=\"a\"} 3"), "{text}");
        assert!(text.contains("scaleout_test_depth 7"), "{text}");
        assert!(
            text.contains("# TYPE scaleout_test_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("scaleout_test_seconds_bucket{method=\"M\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("scaleout_test_seconds_count{method=\"M\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("scaleout_test_batch_commands_bucket{le=\"8\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn two_registries_keep_their_numbers_apart() {
        let (a, b) = (Registry::new(), Registry::new());
        a.counter("scaleout_test_total", "x", &[]).increment(1);
        b.counter("scaleout_test_total", "x", &[]).increment(5);
        assert!(a.render().contains("scaleout_test_total 1"));
        assert!(b.render().contains("scaleout_test_total 5"));
    }

    #[test]
    fn a_handle_taken_twice_is_the_same_metric() {
        let registry = Registry::new();
        registry
            .counter("scaleout_test_total", "x", &[])
            .increment(1);
        registry
            .counter("scaleout_test_total", "x", &[])
            .increment(1);
        assert!(registry.render().contains("scaleout_test_total 2"));
    }
}
