//! A recorder for the `metrics` facade that keeps every value, for exact checks of the metrics a
//! server exports: [`MetricsRecorder::start`] starts a server with it as the thread's local
//! recorder (the global one is process-wide, shared by every test of a binary).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use switchboard::testing::EmbeddedServer;
use switchboard::{Callbacks, Error, Server, ServerBuilder};

/// A series' name and labels, the labels sorted: `name{a="1",b="2"}`.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<_> = labels.to_vec();
    labels.sort_unstable();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

fn key_series(key: &Key) -> String {
    let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
    series(key.name(), &labels)
}

#[derive(Default)]
struct Values(Mutex<Vec<f64>>);

impl HistogramFn for Values {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

#[derive(Default)]
struct Store {
    counters: HashMap<String, Arc<AtomicU64>>,
    gauges: HashMap<String, Arc<AtomicU64>>,
    histograms: HashMap<String, Arc<Values>>,
    units: HashMap<String, Option<Unit>>,
}

/// Keeps every series registered with it.
#[derive(Clone, Default)]
pub struct MetricsRecorder {
    store: Arc<Mutex<Store>>,
}

impl MetricsRecorder {
    /// Starts `builder`'s server with this recorder installed for the start (where the server
    /// takes its handles) on this thread only.
    pub async fn start(
        &self,
        builder: ServerBuilder,
        callbacks: impl Callbacks,
    ) -> Result<Server, Error> {
        // Held across the await: a current-thread runtime polls the start on this thread.
        let _local = metrics::set_default_local_recorder(self);
        builder.start(callbacks).await
    }

    /// [`start`](Self::start) for an embedded server (`switchboard::testing`).
    pub async fn start_embedded(
        &self,
        builder: ServerBuilder,
        callbacks: impl Callbacks,
    ) -> Result<EmbeddedServer, Error> {
        let _local = metrics::set_default_local_recorder(self);
        builder.embedded().start(callbacks).await
    }

    /// A counter's value; `None` if it was never registered.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let store = self.store.lock().unwrap();
        let counter = store.counters.get(&series(name, labels))?;
        Some(counter.load(Ordering::Acquire))
    }

    /// A gauge's value; `None` if it was never registered.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let store = self.store.lock().unwrap();
        let gauge = store.gauges.get(&series(name, labels))?;
        Some(f64::from_bits(gauge.load(Ordering::Acquire)))
    }

    /// Every value a histogram recorded; `None` if it was never registered.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<Vec<f64>> {
        let store = self.store.lock().unwrap();
        let histogram = store.histograms.get(&series(name, labels))?;
        let values = histogram.0.lock().unwrap().clone();
        Some(values)
    }

    /// Every registered series (`name{labels}`), sorted.
    pub fn series(&self) -> Vec<String> {
        let store = self.store.lock().unwrap();
        let mut all: Vec<String> = store
            .counters
            .keys()
            .chain(store.gauges.keys())
            .chain(store.histograms.keys())
            .cloned()
            .collect();
        all.sort_unstable();
        all
    }

    /// The unit a metric was described with; `None` if it was never described.
    pub fn unit(&self, name: &str) -> Option<Option<Unit>> {
        self.store.lock().unwrap().units.get(name).copied()
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        let mut store = self.store.lock().unwrap();
        store.units.insert(key.as_str().to_string(), unit);
    }
}

impl Recorder for MetricsRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut store = self.store.lock().unwrap();
        Counter::from_arc(store.counters.entry(key_series(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut store = self.store.lock().unwrap();
        Gauge::from_arc(store.gauges.entry(key_series(key)).or_default().clone())
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut store = self.store.lock().unwrap();
        Histogram::from_arc(store.histograms.entry(key_series(key)).or_default().clone())
    }
}
