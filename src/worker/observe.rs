//! What a worker tells its operator on `metrics_listen`: the Prometheus metrics sampled at each
//! scrape, and whether it is ready (`/readyz`).
//!
//! Ready means registered with the cluster and in touch with it: some call (registration,
//! heartbeat, task request, lease renewal) answered within three `agent_heartbeat_interval`s
//! (at least [`MIN_CONTACT_LIMIT`]). Otherwise `/readyz` answers 503
//! with the reason: `shutting down`, `not registered yet[: <last error>]`, or
//! `no replica answered for N s: <last error>`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `scaleout_build_info{version}` | gauge | always 1; `version` is the worker's version |
//! | `scaleout_worker_connected` | gauge | 1 while ready (the condition above), else 0 |
//! | `scaleout_worker_running_tasks` | gauge | tasks holding a slot: running, or ended and reporting their result |
//! | `scaleout_worker_max_tasks` | gauge | `max_task_count` |
//! | `scaleout_worker_renew_failures_total` | counter | lease renewals that failed, one per lease: the RenewLeases call carrying it failed, or it came back not renewed (lost) |
//! | `scaleout_worker_tasks_finished_total{outcome}` | counter | tasks that left their slot, by outcome (below) |
//! | `scaleout_worker_spool_entries` | gauge | log batches and results in the spool, not yet delivered |
//! | `scaleout_worker_spool_bytes` | gauge | the size of those entries on disk |
//!
//! Outcomes of `scaleout_worker_tasks_finished_total`, every one present from the start:
//! - `succeeded`: the process exited with code 0 (or the no-op executor ran it);
//! - `failed`: a non-zero exit code, killed by a signal not ours, timed out, could not start,
//!   or killed because the worker shut down; reported FAILED;
//! - `cancelled`: killed because the job was cancelled; reported CANCELLED;
//! - `lost`: killed because the lease was lost (the master said so) or could not be renewed
//!   before the lease may run out (`heartbeat_error_tolerance_ms`, by default derived from the
//!   lease; the master expires it and retries the task).

use std::time::Duration;

use metrics::Counter;

use super::runner::{KillReason, RunOutcome};
use super::WorkerConfig;
use crate::ops::{Observed, Registry};

/// The least time without an answer from the cluster that makes a worker not ready: a heartbeat
/// may spend a few seconds finding a new leader after a failover.
pub const MIN_CONTACT_LIMIT: Duration = Duration::from_secs(3);

/// How a task ended, as `scaleout_worker_tasks_finished_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    Succeeded,
    Failed,
    Cancelled,
    Lost,
}

impl Finished {
    pub(super) const ALL: [Finished; 4] = [
        Finished::Succeeded,
        Finished::Failed,
        Finished::Cancelled,
        Finished::Lost,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Finished::Succeeded => "succeeded",
            Finished::Failed => "failed",
            Finished::Cancelled => "cancelled",
            Finished::Lost => "lost",
        }
    }

    /// The outcome of a process run.
    pub(super) fn of(outcome: &RunOutcome) -> Finished {
        match outcome {
            RunOutcome::Exited(0) => Finished::Succeeded,
            RunOutcome::Exited(_)
            | RunOutcome::Signaled(_)
            | RunOutcome::TimedOut(_)
            | RunOutcome::SpawnFailed(_)
            | RunOutcome::Killed(KillReason::Shutdown) => Finished::Failed,
            RunOutcome::Killed(KillReason::Cancelled) => Finished::Cancelled,
            RunOutcome::Killed(KillReason::LeaseLost | KillReason::NoRenewal) => Finished::Lost,
        }
    }
}

/// The counters the agent feeds where things happen. Cloning shares them.
#[derive(Clone)]
pub(super) struct WorkerMetrics {
    renew_failures: Counter,
    finished: [Counter; 4],
}

impl WorkerMetrics {
    /// Registers the counters in `registry` (at 0, so every series shows from the start).
    pub(super) fn new(registry: &Registry) -> Self {
        WorkerMetrics {
            renew_failures: registry.counter(
                "scaleout_worker_renew_failures_total",
                "Lease renewals that failed, one per lease: the RenewLeases call failed, or the \
                 lease came back not renewed (lost).",
                &[],
            ),
            finished: Finished::ALL.map(|outcome| {
                registry.counter(
                    "scaleout_worker_tasks_finished_total",
                    "Tasks that left their slot, by outcome (succeeded, failed, cancelled, \
                     lost: lease lost or not renewed in time).",
                    &[("outcome", outcome.as_str())],
                )
            }),
        }
    }

    /// `leases` renewals failed.
    pub(super) fn renew_failed(&self, leases: usize) {
        self.renew_failures.increment(leases as u64);
    }

    /// A task left its slot.
    pub(super) fn finished(&self, outcome: Finished) {
        let index = Finished::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.finished[index].increment(1);
    }
}

/// What readiness and the gauges are computed from, read from the agent at each scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct WorkerView {
    pub registered: bool,
    pub shutting_down: bool,
    /// Time since a call last reached the cluster (`None`: never).
    pub since_contact: Option<Duration>,
    /// The last failed call's error.
    pub last_error: Option<String>,
    pub running_tasks: usize,
    pub spool_entries: u64,
    pub spool_bytes: u64,
}

/// How long without an answer from the cluster a worker stays ready.
pub(super) fn contact_limit(config: &WorkerConfig) -> Duration {
    (3 * config.agent_heartbeat_interval()).max(MIN_CONTACT_LIMIT)
}

/// Ready: registered, not shutting down, and heard from the cluster within `limit`.
pub(super) fn readiness(view: &WorkerView, limit: Duration) -> Result<(), String> {
    let last_error = view.last_error.as_deref().unwrap_or("no error recorded");
    if view.shutting_down {
        return Err("shutting down".into());
    }
    if !view.registered {
        return Err(match &view.last_error {
            Some(error) => format!("not registered yet: {error}"),
            None => "not registered yet".into(),
        });
    }
    match view.since_contact {
        Some(age) if age <= limit => Ok(()),
        Some(age) => Err(format!(
            "no replica answered for {} s: {last_error}",
            age.as_secs()
        )),
        None => Err(format!("no replica answered yet: {last_error}")),
    }
}

/// Everything a scrape or a readiness check reads.
pub(super) struct WorkerObserver {
    registry: Registry,
    view: Box<dyn Fn() -> WorkerView + Send + Sync>,
    contact_limit: Duration,
}

impl WorkerObserver {
    /// `view` reads the agent's state; it is called at each scrape and readiness check.
    pub(super) fn new(
        registry: Registry,
        config: &WorkerConfig,
        view: impl Fn() -> WorkerView + Send + Sync + 'static,
    ) -> Self {
        registry
            .gauge(
                "scaleout_build_info",
                "The running version (always 1).",
                &[("version", env!("CARGO_PKG_VERSION"))],
            )
            .set(1.0);
        registry
            .gauge(
                "scaleout_worker_max_tasks",
                "Tasks this worker runs at once at most (max_task_count).",
                &[],
            )
            .set(f64::from(config.max_task_count));
        WorkerObserver {
            registry,
            view: Box::new(view),
            contact_limit: contact_limit(config),
        }
    }

    fn sample(&self, view: &WorkerView) {
        let gauge = |name: &'static str, help: &'static str, value: f64| {
            self.registry.gauge(name, help, &[]).set(value)
        };
        gauge(
            "scaleout_worker_connected",
            "1 while registered and in touch with the cluster (/readyz answers ready), else 0.",
            f64::from(u8::from(readiness(view, self.contact_limit).is_ok())),
        );
        gauge(
            "scaleout_worker_running_tasks",
            "Tasks holding a slot: running, or ended and reporting their result.",
            view.running_tasks as f64,
        );
        gauge(
            "scaleout_worker_spool_entries",
            "Log batches and results in the spool, waiting for the cluster.",
            view.spool_entries as f64,
        );
        gauge(
            "scaleout_worker_spool_bytes",
            "The size on disk of the spooled entries.",
            view.spool_bytes as f64,
        );
    }
}

impl Observed for WorkerObserver {
    fn metrics_text(&self) -> String {
        self.sample(&(self.view)());
        self.registry.render()
    }

    fn readiness(&self) -> Result<(), String> {
        readiness(&(self.view)(), self.contact_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(3);

    fn in_touch() -> WorkerView {
        WorkerView {
            registered: true,
            since_contact: Some(Duration::from_millis(200)),
            ..WorkerView::default()
        }
    }

    fn config(extra: &str) -> WorkerConfig {
        let dir = tempfile::tempdir().expect("a temp dir");
        let text = format!(
            "endpoints = [\"127.0.0.1:7101\"]\nstate_dir = \"state\"\ninsecure = true\n{extra}"
        );
        WorkerConfig::from_toml_str(&text, dir.path(), &[]).expect("a valid test config")
    }

    #[test]
    fn a_registered_worker_in_touch_is_ready() {
        assert_eq!(readiness(&in_touch(), LIMIT), Ok(()));
        let at_the_limit = WorkerView {
            since_contact: Some(LIMIT),
            last_error: Some("an old error".into()),
            ..in_touch()
        };
        assert_eq!(readiness(&at_the_limit, LIMIT), Ok(()));
    }

    #[test]
    fn a_worker_not_registered_yet_is_not_ready() {
        let fresh = WorkerView::default();
        assert_eq!(
            readiness(&fresh, LIMIT),
            Err("not registered yet".to_string())
        );
        let refused = WorkerView {
            last_error: Some("no replica served the call within 10s".into()),
            ..WorkerView::default()
        };
        assert_eq!(
            readiness(&refused, LIMIT),
            Err("not registered yet: no replica served the call within 10s".to_string())
        );
    }

    #[test]
    fn a_worker_cut_off_from_the_cluster_is_not_ready() {
        let cut_off = WorkerView {
            since_contact: Some(Duration::from_millis(12_400)),
            last_error: Some("connection refused".into()),
            ..in_touch()
        };
        assert_eq!(
            readiness(&cut_off, LIMIT),
            Err("no replica answered for 12 s: connection refused".to_string())
        );
        let never = WorkerView {
            since_contact: None,
            ..in_touch()
        };
        let reason = readiness(&never, LIMIT).unwrap_err();
        assert!(reason.contains("no replica answered yet"), "{reason}");
    }

    #[test]
    fn a_worker_shutting_down_is_not_ready() {
        let stopping = WorkerView {
            shutting_down: true,
            ..in_touch()
        };
        assert_eq!(
            readiness(&stopping, LIMIT),
            Err("shutting down".to_string())
        );
    }

    #[test]
    fn the_contact_limit_is_three_heartbeats_and_at_least_the_minimum() {
        assert_eq!(
            contact_limit(&config("agent_heartbeat_interval_ms = 5000\n")),
            Duration::from_secs(15)
        );
        assert_eq!(
            contact_limit(&config("agent_heartbeat_interval_ms = 200\n")),
            MIN_CONTACT_LIMIT
        );
    }

    #[test]
    fn run_outcomes_map_to_the_documented_outcomes() {
        let cases = [
            (RunOutcome::Exited(0), Finished::Succeeded),
            (RunOutcome::Exited(3), Finished::Failed),
            (RunOutcome::Signaled(9), Finished::Failed),
            (RunOutcome::TimedOut(1), Finished::Failed),
            (
                RunOutcome::SpawnFailed("no such file".into()),
                Finished::Failed,
            ),
            (RunOutcome::Killed(KillReason::Shutdown), Finished::Failed),
            (
                RunOutcome::Killed(KillReason::Cancelled),
                Finished::Cancelled,
            ),
            (RunOutcome::Killed(KillReason::LeaseLost), Finished::Lost),
            (RunOutcome::Killed(KillReason::NoRenewal), Finished::Lost),
        ];
        for (run, finished) in cases {
            assert_eq!(Finished::of(&run), finished, "{run:?}");
        }
    }

    /// The value of the sample `series` (name and labels exactly as rendered).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_family_renders() {
        let registry = Registry::new();
        let metrics = WorkerMetrics::new(&registry);
        let observer =
            WorkerObserver::new(registry, &config("max_task_count = 6\n"), || WorkerView {
                running_tasks: 2,
                spool_entries: 3,
                spool_bytes: 512,
                ..in_touch()
            });
        let text = observer.metrics_text();
        let version = env!("CARGO_PKG_VERSION");
        let expect = |series: &str, expected: f64| {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        };
        expect(
            &format!("scaleout_build_info{{version=\"{version}\"}}"),
            1.0,
        );
        expect("scaleout_worker_connected", 1.0);
        expect("scaleout_worker_running_tasks", 2.0);
        expect("scaleout_worker_max_tasks", 6.0);
        expect("scaleout_worker_renew_failures_total", 0.0);
        for outcome in Finished::ALL {
            let series = format!(
                "scaleout_worker_tasks_finished_total{{outcome=\"{}\"}}",
                outcome.as_str()
            );
            expect(&series, 0.0);
        }
        expect("scaleout_worker_spool_entries", 3.0);
        expect("scaleout_worker_spool_bytes", 512.0);
        for family in [
            "scaleout_build_info gauge",
            "scaleout_worker_connected gauge",
            "scaleout_worker_renew_failures_total counter",
            "scaleout_worker_tasks_finished_total counter",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family}")),
                "{family} in\n{text}"
            );
        }

        metrics.renew_failed(3);
        metrics.finished(Finished::Succeeded);
        metrics.finished(Finished::Lost);
        metrics.finished(Finished::Lost);
        let text = observer.metrics_text();
        let expect = |series: &str, expected: f64| {
            assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
        };
        expect("scaleout_worker_renew_failures_total", 3.0);
        expect(
            "scaleout_worker_tasks_finished_total{outcome=\"succeeded\"}",
            1.0,
        );
        expect(
            "scaleout_worker_tasks_finished_total{outcome=\"lost\"}",
            2.0,
        );
        expect(
            "scaleout_worker_tasks_finished_total{outcome=\"failed\"}",
            0.0,
        );
    }

    #[test]
    fn a_worker_not_ready_shows_disconnected() {
        let observer = WorkerObserver::new(Registry::new(), &config(""), WorkerView::default);
        assert_eq!(
            value(&observer.metrics_text(), "scaleout_worker_connected"),
            Some(0.0)
        );
        assert_eq!(observer.readiness(), Err("not registered yet".to_string()));
    }
}
