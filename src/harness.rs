//! Local clusters of real replica processes, for the demo, the benchmarks and the tests.
//!
//! Each replica is the `scaleout master` binary started as a child process with its own config
//! and data dir under one directory. Ports are picked free (outside the kernel's ephemeral
//! range, see [`reserve_ports`]) and are released just before the replicas start. Children are killed when the cluster is dropped, so nothing is
//! left behind even when a test fails.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::chaos::network::ProxiedNetwork;
use crate::chaos::powercut::PowerCutFs;
use crate::client::Client;
use crate::pb::v1::ClusterStatusResponse;
use crate::tls::Role;
use crate::transport::Security;

mod certs;
mod ports;
mod workers;

use certs::tls_table;
pub use certs::ClusterCerts;
pub use ports::{free_ports, reserve_ports};
pub use workers::{wait_for_workers, WorkerOptions, WorkerProcess};

pub struct ReplicaProcess {
    pub id: u64,
    /// The API address others dial (a proxy's, when the network is proxied).
    pub api_addr: String,
    /// The peer address the others learn from the membership.
    pub peer_addr: String,
    /// Where the replica binds its API and peer services.
    pub api_listen: String,
    pub peer_listen: String,
    /// Where the replica serves `/metrics`, `/healthz` and `/readyz` (plain HTTP).
    pub metrics_addr: String,
    /// Where the replica serves the web console (HTTPS), on a cluster with TLS.
    pub console_addr: Option<String>,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl ReplicaProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// Where one replica listens, what it advertises, and where it dials the others.
#[derive(Debug, Clone)]
pub struct ReplicaAddresses {
    pub id: u64,
    /// Advertised API address (`[[members]] api`).
    pub api: String,
    /// Advertised peer address (`[[members]] peer`).
    pub peer: String,
    pub api_listen: String,
    pub peer_listen: String,
    /// `[[peer_routes]]`: member id to the address this replica dials it at.
    pub routes: BTreeMap<u64, String>,
}

impl ReplicaAddresses {
    /// Two fresh loopback ports, advertised as they are bound.
    pub fn local(id: u64) -> anyhow::Result<ReplicaAddresses> {
        let ports = free_ports(2)?;
        Ok(ReplicaAddresses::at(id, ports[0], ports[1]))
    }

    /// Loopback `api_port` and `peer_port`, advertised as they are bound.
    pub fn at(id: u64, api_port: u16, peer_port: u16) -> ReplicaAddresses {
        let api = format!("127.0.0.1:{api_port}");
        let peer = format!("127.0.0.1:{peer_port}");
        ReplicaAddresses {
            id,
            api_listen: api.clone(),
            peer_listen: peer.clone(),
            api,
            peer,
            routes: BTreeMap::new(),
        }
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub replicas: u64,
    /// `key=value` config overrides given to every replica (`--set`).
    pub overrides: Vec<String>,
    /// RUST_LOG of the replicas; empty: not set, the replicas' own default (what an operator
    /// who sets nothing reads).
    pub log_filter: String,
    /// Mutual TLS with certificates from a development CA made for this cluster (the default);
    /// `false` runs everything with `insecure = true`.
    pub tls: bool,
    /// Test only: each replica's wall clock follows an offset file the cluster writes
    /// ([`LocalCluster::step_clock`]), through `workers.test_clock_offset_file`.
    pub steppable_clocks: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 3,
            overrides: Vec::new(),
            log_filter: "info".into(),
            tls: true,
            steppable_clocks: false,
        }
    }
}

/// In a replica's directory: its clock offset in ms (`steppable_clocks`).
const CLOCK_OFFSET_FILE: &str = "clock-offset";

pub struct LocalCluster {
    binary: PathBuf,
    root: PathBuf,
    /// Things that must outlive the processes (file system mounts under `root`); dropped after
    /// them and before the temporary directory (fields drop in declaration order).
    guards: Vec<Box<dyn std::any::Any + Send + Sync>>,
    _temp: Option<tempfile::TempDir>,
    options: ClusterOptions,
    /// `None` when the cluster runs `insecure`.
    pub certs: Option<ClusterCerts>,
    pub replicas: Vec<ReplicaProcess>,
    pub workers: Vec<WorkerProcess>,
}

impl LocalCluster {
    /// Writes configs for a new cluster in a fresh temp dir and starts every replica.
    pub fn start(binary: &Path, options: ClusterOptions) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster::configure_in_temp_dir(binary, options)?;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Writes configs in a fresh temp dir (removed on drop) without starting anything.
    pub fn configure_in_temp_dir(
        binary: &Path,
        options: ClusterOptions,
    ) -> anyhow::Result<LocalCluster> {
        let temp = tempfile::Builder::new()
            .prefix("scaleout-cluster-")
            .tempdir()?;
        let mut cluster = LocalCluster::configure(binary, temp.path(), options)?;
        cluster._temp = Some(temp);
        Ok(cluster)
    }

    /// Starts a cluster of three in a temp dir whose peer links and APIs pass through
    /// fault-injecting proxies ([`ProxiedNetwork`]: cut, isolate, heal).
    pub async fn start_behind_proxies(
        binary: &Path,
        options: ClusterOptions,
    ) -> anyhow::Result<(LocalCluster, ProxiedNetwork)> {
        let (network, layout) = ProxiedNetwork::start(3).await?;
        let temp = tempfile::Builder::new()
            .prefix("scaleout-proxied-")
            .tempdir()?;
        let mut cluster = LocalCluster::configure_with(binary, temp.path(), options, layout)?;
        cluster._temp = Some(temp);
        network.release_ports();
        cluster.start_all()?;
        Ok((cluster, network))
    }

    /// Writes configs under `root` without starting anything.
    pub fn configure(
        binary: &Path,
        root: &Path,
        options: ClusterOptions,
    ) -> anyhow::Result<LocalCluster> {
        let ports = free_ports(2 * options.replicas as usize)?;
        let layout = (1..=options.replicas)
            .zip(ports.chunks(2))
            .map(|(id, pair)| ReplicaAddresses::at(id, pair[0], pair[1]))
            .collect();
        LocalCluster::configure_with(binary, root, options, layout)
    }

    /// Writes configs under `root` for replicas at the addresses of `layout` (one entry per
    /// replica, ids in order) without starting anything.
    pub fn configure_with(
        binary: &Path,
        root: &Path,
        options: ClusterOptions,
        layout: Vec<ReplicaAddresses>,
    ) -> anyhow::Result<LocalCluster> {
        let certs = if options.tls {
            Some(ClusterCerts::create(
                root.join("certs"),
                layout.len() as u64,
            )?)
        } else {
            None
        };
        let mut cluster = LocalCluster {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            guards: Vec::new(),
            _temp: None,
            options,
            certs,
            replicas: Vec::new(),
            workers: Vec::new(),
        };
        let members = layout.clone();
        for addresses in layout {
            cluster.write_replica_config(addresses, &members)?;
        }
        Ok(cluster)
    }

    /// Writes the config of a replica that is not yet a member (`cluster add-replica`): its
    /// members are the current replicas and itself. Returns its id; start it with
    /// [`LocalCluster::restart`].
    pub fn configure_new_replica(&mut self, addresses: ReplicaAddresses) -> anyhow::Result<u64> {
        let id = addresses.id;
        if self.replicas.iter().any(|r| r.id == id) {
            bail!("replica {id} exists already");
        }
        if let Some(certs) = &self.certs {
            certs.issue(Role::Replica(id))?;
        }
        let mut members: Vec<ReplicaAddresses> = self
            .replicas
            .iter()
            .map(|r| ReplicaAddresses {
                id: r.id,
                api: r.api_addr.clone(),
                peer: r.peer_addr.clone(),
                api_listen: r.api_listen.clone(),
                peer_listen: r.peer_listen.clone(),
                routes: BTreeMap::new(),
            })
            .collect();
        members.push(addresses.clone());
        self.write_replica_config(addresses, &members)?;
        Ok(id)
    }

    fn write_replica_config(
        &mut self,
        me: ReplicaAddresses,
        members: &[ReplicaAddresses],
    ) -> anyhow::Result<()> {
        let id = me.id;
        let mut listed = String::new();
        for m in members {
            listed.push_str(&format!(
                "\n[[members]]\nid = {}\napi = \"{}\"\npeer = \"{}\"\n",
                m.id, m.api, m.peer
            ));
        }
        for (to, address) in &me.routes {
            listed.push_str(&format!(
                "\n[[peer_routes]]\nid = {to}\naddress = \"{address}\"\n"
            ));
        }
        let dir = self.root.join(format!("replica-{id}"));
        fs::create_dir_all(&dir)?;
        let config_path = dir.join("master.toml");
        let data_dir = dir.join("data");
        let security = match &self.certs {
            Some(certs) => tls_table(&certs.paths(&Role::Replica(id))),
            None => "insecure = true\n".into(),
        };
        let (top, tables) = if self.certs.is_some() {
            (String::new(), security)
        } else {
            (security, String::new())
        };
        let metrics_addr = format!("127.0.0.1:{}", free_ports(1)?[0]);
        let console_addr = match self.certs {
            Some(_) => Some(format!("127.0.0.1:{}", free_ports(1)?[0])),
            None => None,
        };
        let console = console_addr
            .as_ref()
            .map(|addr| format!("console_listen = \"{addr}\"\n"))
            .unwrap_or_default();
        let clock = if self.options.steppable_clocks {
            format!(
                "test_clock_offset_file = \"{}\"\n",
                dir.join(CLOCK_OFFSET_FILE).display()
            )
        } else {
            String::new()
        };
        fs::write(
            &config_path,
            format!(
                "id = {id}\ndata_dir = \"{}\"\napi_listen = \"{}\"\npeer_listen = \"{}\"\n\
                 metrics_listen = \"{metrics_addr}\"\n{console}{top}{listed}\n[workers]\n\
                 approval = \"auto\"\n{clock}{tables}",
                data_dir.display(),
                me.api_listen,
                me.peer_listen,
            ),
        )?;
        self.replicas.push(ReplicaProcess {
            id,
            api_addr: me.api,
            peer_addr: me.peer,
            api_listen: me.api_listen,
            peer_listen: me.peer_listen,
            metrics_addr,
            console_addr,
            config_path,
            data_dir,
            log_path: dir.join("replica.log"),
            child: None,
        });
        Ok(())
    }

    /// Steps replica `id`'s wall clock to `offset_ms` from the real one (a cluster started
    /// with `steppable_clocks`); the replica sees it within 50 ms.
    pub fn step_clock(&self, id: u64, offset_ms: i64) -> anyhow::Result<()> {
        if !self.options.steppable_clocks {
            bail!("the cluster was started without steppable_clocks");
        }
        let dir = self.root.join(format!("replica-{id}"));
        let tmp = dir.join(format!("{CLOCK_OFFSET_FILE}.tmp"));
        fs::write(&tmp, offset_ms.to_string())?;
        fs::rename(&tmp, dir.join(CLOCK_OFFSET_FILE))?;
        Ok(())
    }

    /// Makes the cluster own `dir`: it is removed when the cluster is dropped.
    pub fn own_dir(&mut self, dir: tempfile::TempDir) {
        self._temp = Some(dir);
    }

    /// Leaves the cluster's directory in place when the cluster is dropped (the processes still
    /// stop); returns it.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(temp) = self._temp.take() {
            let _ = temp.keep();
        }
        self.root.clone()
    }

    /// Keeps `guard` until the processes are gone (e.g. a file system mounted under the root).
    pub fn keep_until_drop(&mut self, guard: Box<dyn std::any::Any + Send + Sync>) {
        self.guards.push(guard);
    }

    /// Mounts a [`PowerCutFs`] on every replica's data dir, before the replicas start; the
    /// cluster keeps each mount until its processes are gone. Needs /dev/fuse (the mount error
    /// says so).
    pub fn mount_power_cuts(&mut self) -> anyhow::Result<BTreeMap<u64, Arc<PowerCutFs>>> {
        let mut mounts = BTreeMap::new();
        let dirs: Vec<(u64, PathBuf)> = self
            .replicas
            .iter()
            .map(|r| (r.id, r.data_dir.clone()))
            .collect();
        for (id, dir) in dirs {
            fs::create_dir_all(&dir)?;
            let mount = Arc::new(PowerCutFs::mount(&dir).with_context(|| {
                format!("cannot put replica {id}'s data dir on a power-cut file system")
            })?);
            self.keep_until_drop(Box::new(mount.clone()));
            mounts.insert(id, mount);
        }
        Ok(mounts)
    }

    /// Empties a stopped replica's data dir (a lost disk). The directory itself stays: it may
    /// be a mount point.
    pub fn wipe(&mut self, id: u64) -> anyhow::Result<()> {
        let replica = self.replica(id)?;
        if replica.is_running() {
            bail!("replica {id} is running; stop it before wiping its data dir");
        }
        if replica.data_dir.exists() {
            for item in fs::read_dir(&replica.data_dir)? {
                let path = item?.path();
                let removed = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Forgets a stopped replica that left the membership.
    pub fn forget(&mut self, id: u64) -> anyhow::Result<()> {
        let index = self.index(id)?;
        if self.replicas[index].is_running() {
            bail!("replica {id} is running; stop it first");
        }
        self.replicas.remove(index);
        Ok(())
    }

    /// Starts every replica that is not running.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for index in 0..self.replicas.len() {
            if self.replicas[index].child.is_none() {
                self.start_replica(index)?;
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.api_addr.clone()).collect()
    }

    /// A client of every replica with the admin certificate (all rights but the peer port).
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.endpoints(), self.client_security()?)?)
    }

    /// A client of the one replica at `api_addr` (no redirect target but the leader it names).
    pub fn client_at(&self, api_addr: &str) -> anyhow::Result<Client> {
        Ok(Client::new(&[api_addr], self.client_security()?)?)
    }

    /// How the cluster's clients connect: the admin certificate, or plaintext.
    pub fn client_security(&self) -> anyhow::Result<Security> {
        match &self.certs {
            Some(certs) => certs.admin_security(),
            None => Ok(Security::Insecure),
        }
    }

    /// A raw gRPC channel to `addr` presenting `role`'s certificate (plaintext when the cluster
    /// is insecure), for tests that speak to a service directly.
    pub fn channel_as(&self, addr: &str, role: &Role) -> anyhow::Result<tonic::transport::Channel> {
        let security = match &self.certs {
            Some(certs) => certs.security(role)?,
            None => Security::Insecure,
        };
        Ok(security.channel(addr, |endpoint| {
            endpoint.connect_timeout(Duration::from_secs(5))
        })?)
    }

    /// How a worker with `agent_id` connects: its own certificate, issued now (or plaintext
    /// when the cluster is insecure).
    pub fn worker_security(&self, agent_id: uuid::Uuid) -> anyhow::Result<Security> {
        match &self.certs {
            Some(certs) => {
                certs.issue(Role::Worker(agent_id))?;
                certs.security(&Role::Worker(agent_id))
            }
            None => Ok(Security::Insecure),
        }
    }

    /// The CLI flags that make `scaleout job|workers|cluster ...` talk to this cluster as its
    /// admin: `--tls-dir DIR --identity admin`, or `--insecure`.
    pub fn cli_security_args(&self) -> Vec<String> {
        match &self.certs {
            Some(certs) => vec![
                "--tls-dir".into(),
                certs.dir.display().to_string(),
                "--identity".into(),
                "admin".into(),
            ],
            None => vec!["--insecure".into()],
        }
    }

    /// The certificate files of `role` (an operator or admin the cluster's CA issued), on a
    /// cluster with TLS.
    pub fn identity_paths(&self, role: &Role) -> Option<crate::tls::TlsPaths> {
        self.certs.as_ref().map(|certs| certs.paths(role))
    }

    /// A web console sign-in token for `role`, valid for `lifetime` (a cluster with TLS).
    pub fn console_token(&self, role: &Role, lifetime: Duration) -> anyhow::Result<String> {
        let paths = self
            .identity_paths(role)
            .context("the cluster has no certificates (it runs without TLS)")?;
        let identity = crate::tls::load_identity(&paths.ca, &paths.cert, &paths.key)?;
        Ok(crate::console::token::issue(
            &identity,
            lifetime,
            crate::wall_time::now_ms(),
        )?)
    }

    pub fn replica(&self, id: u64) -> anyhow::Result<&ReplicaProcess> {
        self.replicas
            .iter()
            .find(|r| r.id == id)
            .with_context(|| format!("no replica {id}"))
    }

    fn index(&self, id: u64) -> anyhow::Result<usize> {
        self.replicas
            .iter()
            .position(|r| r.id == id)
            .with_context(|| format!("no replica {id}"))
    }

    /// `scaleout <role> --config <config>`, logging to `log` (appended), dying with us.
    fn command(&self, role: &str, config: &Path, log: &Path) -> anyhow::Result<Command> {
        let log = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut command = Command::new(&self.binary);
        command
            .arg(role)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match self.options.log_filter.as_str() {
            "" => command.env_remove("RUST_LOG"),
            filter => command.env("RUST_LOG", filter),
        };
        die_with_parent(&mut command);
        Ok(command)
    }

    fn start_replica(&mut self, index: usize) -> anyhow::Result<()> {
        let replica = &self.replicas[index];
        if replica.child.is_some() {
            bail!("replica {} is already running", replica.id);
        }
        let mut command = self.command("master", &replica.config_path, &replica.log_path)?;
        for key_value in &self.options.overrides {
            command.arg("--set").arg(key_value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.replicas[index].child = Some(child);
        Ok(())
    }

    /// Starts a replica that was killed or stopped, on its existing data dir.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let index = self.index(id)?;
        self.start_replica(index)
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let index = self.index(id)?;
        if let Some(mut child) = self.replicas[index].child.take() {
            child.kill().context("kill -9 failed")?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit (kill -9 after `grace`).
    pub async fn stop(&mut self, id: u64, grace: Duration) -> anyhow::Result<()> {
        let index = self.index(id)?;
        let Some(mut child) = self.replicas[index].child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Waits up to `timeout` for a replica to exit by itself; its exit status, or `None` if it
    /// still runs.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let index = self.index(id)?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = self.replicas[index].child.as_mut() else {
                bail!("replica {id} is not running");
            };
            if let Some(status) = child.try_wait()? {
                self.replicas[index].child = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGSTOP (`pause = true`) or SIGCONT.
    pub fn pause(&self, id: u64, pause: bool) -> anyhow::Result<()> {
        stop_or_continue(
            self.replica(id)?.pid().context("replica is not running")?,
            pause,
        )
    }

    /// The last `lines` lines of every replica's log, each under a heading, for failure
    /// messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.replicas
            .iter()
            .map(|r| {
                format!(
                    "\n--- replica {} log (last lines) ---\n{}",
                    r.id,
                    tail(&r.log_path, lines)
                )
            })
            .collect()
    }

    /// The last lines a replica logged, for failure messages.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        self.replica(id)
            .map_or(String::new(), |r| tail(&r.log_path, lines))
    }

    /// Cluster status as one replica sees it.
    pub async fn status_of(&self, id: u64) -> anyhow::Result<ClusterStatusResponse> {
        let replica = self.replica(id)?;
        let client = self
            .client_at(&replica.api_listen)?
            .with_deadline(Duration::from_secs(2));
        Ok(client.cluster_status().await?)
    }

    /// Waits until every running replica reports the same leader (one of the running ones) and
    /// the same term; returns (leader id, term).
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            match self.agreed_leader().await {
                Ok(found) => return Ok(found),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let tails = self.log_tails(25);
        bail!("no agreed leader within {timeout:?}: {last}{tails}")
    }

    async fn agreed_leader(&self) -> anyhow::Result<(u64, u64)> {
        let mut seen = None;
        for replica in self.replicas.iter().filter(|r| r.is_running()) {
            let status = self.status_of(replica.id).await?;
            let leader = status.leader_id.context("no leader known")?;
            let view = (leader, status.term);
            if seen.is_some_and(|s| s != view) {
                bail!("replicas disagree: {seen:?} vs {view:?}");
            }
            seen = Some(view);
        }
        let (leader, term) = seen.context("no replica is running")?;
        if !self.replica(leader)?.is_running() {
            bail!("the reported leader {leader} is not running");
        }
        Ok((leader, term))
    }

    /// A replica other than `leader`: a follower.
    pub fn follower_of(&self, leader: u64) -> anyhow::Result<u64> {
        self.replicas
            .iter()
            .map(|r| r.id)
            .find(|id| *id != leader)
            .context("no replica but the leader")
    }

    /// Waits until `id` has applied at least `index`.
    pub async fn wait_for_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(status) = self.status_of(id).await {
                last = applied_index(&status, id);
                if last.is_some_and(|applied| applied >= index) {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("replica {id} applied {last:?}, not {index}, within {timeout:?}")
    }
}

/// The applied index `status` gives for replica `id`.
pub fn applied_index(status: &ClusterStatusResponse, id: u64) -> Option<u64> {
    status
        .replicas
        .iter()
        .find(|r| r.id == id)
        .and_then(|r| r.applied_index)
}

/// SIGSTOP (`pause = true`) or SIGCONT to a process we started.
fn stop_or_continue(pid: u32, pause: bool) -> anyhow::Result<()> {
    let signal = if pause {
        Signal::SIGSTOP
    } else {
        Signal::SIGCONT
    };
    kill(Pid::from_raw(pid as i32), signal)?;
    Ok(())
}

/// The last `lines` lines of a log file (empty if it cannot be read: this is for messages).
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// If this process dies without unwinding (SIGKILL, a CI timeout), the kernel kills the child
/// too, so none is left holding its ports. The signal follows the spawning *thread*: clusters
/// are started from a test's or the CLI's main thread, which lives as long as the cluster.
fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe system call.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(mut child) = worker.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        kill_tasks_left_under(&self.root);
    }
}

/// Kills the processes whose working directory is under `root`: the tasks our workers started
/// (each runs in its own folder under the worker's, in its own process group), which outlive a
/// killed agent as they would in production, and would outlive the test.
pub fn kill_tasks_left_under(root: &Path) {
    let Ok(root) = root.canonicalize() else {
        return;
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let under_root =
            fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&root));
        if under_root && pid != std::process::id() as i32 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
