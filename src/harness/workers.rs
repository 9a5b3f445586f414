//! Worker agent processes of a local cluster: started, killed, paused and restarted by name.

use std::fs;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;

use super::certs::tls_table;
use super::{stop_or_continue, tail, LocalCluster};
use crate::client::Client;
use crate::tls::Role;

/// A worker agent process of a local cluster.
pub struct WorkerProcess {
    pub name: String,
    pub agent_id: uuid::Uuid,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub(super) child: Option<Child>,
}

impl WorkerProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// How to start a worker of a local cluster.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub name: String,
    pub tags: Vec<String>,
    pub max_tasks: u32,
    /// Extra `key = value` lines for the worker's config file.
    pub extra_config: Vec<String>,
    /// The replica addresses it dials; `None`: every replica's `api` address.
    pub endpoints: Option<Vec<String>>,
}

impl WorkerOptions {
    pub fn named(name: &str) -> Self {
        WorkerOptions {
            name: name.to_string(),
            tags: Vec::new(),
            max_tasks: 4,
            extra_config: Vec::new(),
            endpoints: None,
        }
    }

    /// A worker for tests: heartbeats and renewals a few times a second, short long-polls, and
    /// no CPU or memory threshold (a loaded test machine must not hold tasks back).
    pub fn fast(name: &str) -> Self {
        WorkerOptions {
            extra_config: vec![
                "agent_heartbeat_interval_ms = 300".into(),
                "task_heartbeat_interval_ms = 500".into(),
                "acquire_wait_ms = 1000".into(),
                "task_request_max_cpu = 100.0".into(),
                "task_request_min_memory_mb = 0".into(),
            ],
            ..WorkerOptions::named(name)
        }
    }
}

/// Waits until `count` workers are online and enabled (a call that fails while the cluster
/// settles is retried), for at most `timeout`.
pub async fn wait_for_workers(
    client: &Client,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let online = client
            .list_workers(false)
            .await
            .map(|w| w.iter().filter(|w| w.online && w.enabled).count())
            .unwrap_or(0);
        if online >= count {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{online} of {count} workers came online within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl LocalCluster {
    /// Writes a worker config under the cluster's root and starts the worker agent.
    pub fn start_worker(&mut self, options: WorkerOptions) -> anyhow::Result<uuid::Uuid> {
        let dir = self.root.join(format!("worker-{}", options.name));
        fs::create_dir_all(&dir)?;
        let agent_id = uuid::Uuid::new_v4();
        let endpoints: Vec<String> = options
            .endpoints
            .clone()
            .unwrap_or_else(|| self.endpoints())
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let tags: Vec<String> = options.tags.iter().map(|t| format!("\"{t}\"")).collect();
        let mut config = format!(
            "agent_id = \"{agent_id}\"\ndisplay_name = \"{}\"\nendpoints = [{}]\ntags = [{}]\n\
             max_task_count = {}\n{}state_dir = \"{}\"\ntasks_root_folder = \"{}\"\n",
            options.name,
            endpoints.join(", "),
            tags.join(", "),
            options.max_tasks,
            if self.certs.is_some() {
                ""
            } else {
                "insecure = true\n"
            },
            dir.join("state").display(),
            dir.join("tasks").display(),
        );
        for line in &options.extra_config {
            config.push_str(line);
            config.push('\n');
        }
        if let Some(certs) = &self.certs {
            config.push_str(&tls_table(&certs.issue(Role::Worker(agent_id))?));
        }
        let config_path = dir.join("worker.toml");
        fs::write(&config_path, config)?;
        self.workers.push(WorkerProcess {
            name: options.name,
            agent_id,
            config_path,
            log_path: dir.join("worker.log"),
            child: None,
        });
        let index = self.workers.len() - 1;
        self.spawn_worker(index)?;
        Ok(agent_id)
    }

    fn spawn_worker(&mut self, index: usize) -> anyhow::Result<()> {
        let worker = &self.workers[index];
        let mut command = self.command("worker", &worker.config_path, &worker.log_path)?;
        self.workers[index].child = Some(command.spawn().context("cannot start a worker")?);
        Ok(())
    }

    pub fn worker(&self, name: &str) -> anyhow::Result<&WorkerProcess> {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .with_context(|| format!("no worker {name}"))
    }

    fn worker_index(&self, name: &str) -> anyhow::Result<usize> {
        self.workers
            .iter()
            .position(|w| w.name == name)
            .with_context(|| format!("no worker {name}"))
    }

    /// kill -9 of a worker.
    pub fn kill_worker(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.worker_index(name)?;
        if let Some(mut child) = self.workers[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a worker again with the same config (and agent id).
    pub fn restart_worker(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self.worker_index(name)?;
        if self.workers[index].child.is_some() {
            bail!("worker {name} is already running");
        }
        self.spawn_worker(index)
    }

    /// Replicas and workers that exited without being stopped by this harness (a crash, or a
    /// restart that could not bind its port): forgets their processes so they count as
    /// stopped, and says who and how each ended.
    pub fn reap_exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for replica in &mut self.replicas {
            if let Some(child) = replica.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push(format!("replica {} ({status})", replica.id));
                    replica.child = None;
                }
            }
        }
        for worker in &mut self.workers {
            if let Some(child) = worker.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    exited.push(format!("worker {} ({status})", worker.name));
                    worker.child = None;
                }
            }
        }
        exited
    }

    /// SIGSTOP (`pause = true`) or SIGCONT of a worker.
    pub fn pause_worker(&self, name: &str, pause: bool) -> anyhow::Result<()> {
        stop_or_continue(
            self.worker(name)?.pid().context("worker is not running")?,
            pause,
        )
    }

    /// Waits up to `timeout` for worker `name` to exit by itself; its exit code (`None`:
    /// killed by a signal).
    pub async fn wait_worker_exit(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Option<i32>> {
        let index = self.worker_index(name)?;
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.workers[index]
                .child
                .as_mut()
                .context("the worker is not running")?;
            if let Some(status) = child.try_wait()? {
                self.workers[index].child = None;
                return Ok(status.code());
            }
            if Instant::now() >= deadline {
                bail!("worker {name} still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn worker_log_tail(&self, name: &str, lines: usize) -> String {
        self.worker(name)
            .map_or(String::new(), |w| tail(&w.log_path, lines))
    }
}
