//! The faults the chaos run injects, one after another, each healed before the next: process
//! kills and pauses (replicas and workers), partitions through the link proxies (both
//! directions, one way, replica cut off from its workers, and the leader cut off from its peers
//! for longer than a commit timeout while its SQL link stays up), a replica that loses its disk and
//! comes back as a new member, power cuts (one replica, the leader, or all at once) that lose
//! every write not yet synced (`powercut.rs`), steps of the leader's wall clock (forward and
//! back, through the replicas' test-only clock offset files), and overlapping faults that
//! still leave a majority (a follower paused while a worker is killed and the leader's API is
//! cut).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::sleep;
use tracing::info;

use super::check::FaultRecord;
use super::network::ProxiedNetwork;
use super::powercut::PowerCutFs;
use super::proxy::{LinkMode, LinkProxy};
use crate::client::Client;
use crate::harness::LocalCluster;
use crate::wall_time::now_ms;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    PauseLeader,
    IsolateLeader,
    IsolateFollower,
    PartitionLeaderFromPeers,
    OneWayLink,
    CutLeaderApi,
    PauseWorker,
    KillWorker,
    WipeFollower,
    SsisdbOutage,
    PowerCutFollower,
    PowerCutLeader,
    PowerCutAll,
    ClockStepLeader,
    Overlapping,
}

impl FaultKind {
    pub const ALL: [FaultKind; 17] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::IsolateFollower,
        FaultKind::PartitionLeaderFromPeers,
        FaultKind::OneWayLink,
        FaultKind::CutLeaderApi,
        FaultKind::PauseWorker,
        FaultKind::KillWorker,
        FaultKind::WipeFollower,
        FaultKind::SsisdbOutage,
        FaultKind::PowerCutFollower,
        FaultKind::PowerCutLeader,
        FaultKind::PowerCutAll,
        FaultKind::ClockStepLeader,
        FaultKind::Overlapping,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateFollower => "isolate-follower",
            FaultKind::PartitionLeaderFromPeers => "partition-leader-from-peers",
            FaultKind::OneWayLink => "one-way-link",
            FaultKind::CutLeaderApi => "cut-leader-api",
            FaultKind::PauseWorker => "pause-worker",
            FaultKind::KillWorker => "kill-worker",
            FaultKind::WipeFollower => "wipe-follower",
            FaultKind::SsisdbOutage => "ssisdb-outage",
            FaultKind::PowerCutFollower => "power-cut-follower",
            FaultKind::PowerCutLeader => "power-cut-leader",
            FaultKind::PowerCutAll => "power-cut-all",
            FaultKind::ClockStepLeader => "clock-step-leader",
            FaultKind::Overlapping => "overlapping",
        }
    }

    /// A power cut: needs the replicas' data dirs on [`PowerCutFs`] mounts.
    pub fn is_power_cut(self) -> bool {
        matches!(
            self,
            FaultKind::PowerCutFollower | FaultKind::PowerCutLeader | FaultKind::PowerCutAll
        )
    }

    /// Whether the fault keeps workers from the leader long enough for leases to expire. A
    /// clock step does not: a lease it expired is a breach.
    fn touches_workers(self) -> bool {
        matches!(
            self,
            FaultKind::CutLeaderApi
                | FaultKind::PauseWorker
                | FaultKind::KillWorker
                | FaultKind::Overlapping
        )
    }
}

/// What the injector needs: the cluster, its network, an admin client, and the timings.
pub struct Injector<'a> {
    pub cluster: &'a mut LocalCluster,
    pub network: &'a ProxiedNetwork,
    pub admin: &'a Client,
    /// The proxy in front of SSISDB, when the run ships to one.
    pub sql: Option<&'a LinkProxy>,
    pub rng: StdRng,
    pub lease: Duration,
    pub election_timeout_max: Duration,
    /// Processes that exited by themselves during the run ("replica 2 (exit status: 1)").
    pub crashes: Vec<String>,
    /// Each replica's data dir mount, for power cuts (empty when the run has none).
    pub power: &'a BTreeMap<u64, std::sync::Arc<PowerCutFs>>,
}

impl Injector<'_> {
    /// Injects one fault of `kind`, holds it, heals it, and says what it did. `None` when the
    /// fault had no target (no agreed leader at that moment).
    pub async fn inject(&mut self, kind: FaultKind) -> anyhow::Result<Option<FaultRecord>> {
        self.restart_crashed()?;
        let Ok((leader, _)) = self.cluster.wait_for_leader(Duration::from_secs(20)).await else {
            return Ok(None);
        };
        let followers: Vec<u64> = self
            .cluster
            .replicas
            .iter()
            .map(|r| r.id)
            .filter(|id| *id != leader)
            .collect();
        let follower = followers[self.rng.gen_range(0..followers.len())];
        let mode = if self.rng.gen_bool(0.5) {
            LinkMode::Refuse
        } else {
            LinkMode::Blackhole
        };
        let started = now_ms();
        let detail = match kind {
            FaultKind::KillLeader | FaultKind::KillFollower => {
                let victim = if kind == FaultKind::KillLeader {
                    leader
                } else {
                    follower
                };
                self.cluster.kill(victim)?;
                sleep(self.between(500, 2000)).await;
                self.cluster.restart(victim)?;
                format!("replica {victim}")
            }
            FaultKind::PauseLeader => {
                // Longer than an election: the others elect a leader while this one sleeps.
                let hold = self.election_timeout_max * 3 + self.between(0, 1500);
                self.cluster.pause(leader, true)?;
                sleep(hold).await;
                self.cluster.pause(leader, false)?;
                format!("replica {leader} for {} ms", hold.as_millis())
            }
            FaultKind::IsolateLeader | FaultKind::IsolateFollower => {
                let victim = if kind == FaultKind::IsolateLeader {
                    leader
                } else {
                    follower
                };
                let hold = self.between(1500, 4000);
                self.network.isolate(victim, mode);
                sleep(hold).await;
                self.network.heal();
                format!("replica {victim} ({mode:?}) for {} ms", hold.as_millis())
            }
            FaultKind::PartitionLeaderFromPeers => {
                // Longer than a commit timeout (10 s) and than the shipper's retry: the old
                // leader, still believing it leads, keeps its API and its SQL link and ships
                // its older state again while the new leader ships newer rows.
                let hold = self.between(25_000, 30_000);
                self.network.isolate(leader, mode);
                sleep(hold).await;
                self.network.heal();
                format!("replica {leader} ({mode:?}) for {} ms", hold.as_millis())
            }
            FaultKind::OneWayLink => {
                let (from, to) = if self.rng.gen_bool(0.5) {
                    (leader, follower)
                } else {
                    (follower, leader)
                };
                let hold = self.between(1500, 4000);
                self.network.cut(from, to, mode);
                sleep(hold).await;
                self.network.heal();
                format!("{from} -> {to} ({mode:?}) for {} ms", hold.as_millis())
            }
            FaultKind::CutLeaderApi => {
                let hold = self.between(1000, 3000);
                self.network.cut_api(leader, mode);
                sleep(hold).await;
                self.network.heal();
                format!(
                    "replica {leader}'s API ({mode:?}) for {} ms",
                    hold.as_millis()
                )
            }
            FaultKind::PauseWorker => {
                let name = self.worker_name()?;
                // Past its lease: the task is leased again elsewhere, and this worker's late
                // completion must be refused.
                let hold = self.lease + self.between(1000, 2000);
                self.cluster.pause_worker(&name, true)?;
                sleep(hold).await;
                self.cluster.pause_worker(&name, false)?;
                format!("{name} for {} ms", hold.as_millis())
            }
            FaultKind::KillWorker => {
                let name = self.worker_name()?;
                self.cluster.kill_worker(&name)?;
                sleep(self.between(500, 1500)).await;
                self.cluster.restart_worker(&name)?;
                name
            }
            FaultKind::WipeFollower => self.wipe(follower).await?,
            FaultKind::PowerCutLeader | FaultKind::PowerCutFollower => {
                let victim = if kind == FaultKind::PowerCutLeader {
                    leader
                } else {
                    follower
                };
                let lost = self.power_cut(&[victim])?;
                sleep(self.between(500, 2000)).await;
                self.cluster.restart(victim)?;
                format!("replica {victim} ({lost})")
            }
            FaultKind::PowerCutAll => {
                // The whole cluster at once: every acknowledged entry must survive, since a
                // majority synced it before the acknowledgment.
                let all: Vec<u64> = self.cluster.replicas.iter().map(|r| r.id).collect();
                let lost = self.power_cut(&all)?;
                sleep(self.between(500, 1500)).await;
                for id in &all {
                    self.cluster.restart(*id)?;
                }
                format!("replicas {all:?} ({lost})")
            }
            FaultKind::ClockStepLeader => {
                // Two lease intervals forward or back: read as it is, forward would expire every
                // live lease at the next check. Then the clock steps back to true time.
                let lease = self.lease.as_millis() as i64;
                let step = if self.rng.gen_bool(0.5) {
                    2 * lease
                } else {
                    -2 * lease
                };
                let hold = self.between(1000, 4000);
                self.cluster.step_clock(leader, step)?;
                sleep(hold).await;
                self.cluster.step_clock(leader, 0)?;
                format!(
                    "replica {leader}'s clock {step:+} ms for {} ms",
                    hold.as_millis()
                )
            }
            FaultKind::Overlapping => {
                // Three at once, a majority of replicas still up and connected.
                let name = self.worker_name()?;
                let hold = self.between(1500, 4000);
                self.cluster.pause(follower, true)?;
                self.cluster.kill_worker(&name)?;
                self.network.cut_api(leader, mode);
                sleep(hold).await;
                self.network.heal();
                self.cluster.restart_worker(&name)?;
                self.cluster.pause(follower, false)?;
                format!(
                    "replica {follower} paused, {name} killed, replica {leader}'s API ({mode:?}) \
                     for {} ms",
                    hold.as_millis()
                )
            }
            FaultKind::SsisdbOutage => {
                let Some(sql) = self.sql else {
                    return Ok(None);
                };
                // What an availability-group failover looks like through the listener.
                let hold = self.between(2000, 8000);
                sql.set(mode);
                sleep(hold).await;
                sql.set(LinkMode::Pass);
                format!("listener ({mode:?}) for {} ms", hold.as_millis())
            }
        };
        let record = FaultRecord {
            kind: kind.name(),
            detail,
            started_unix_ms: started,
            healed_unix_ms: now_ms(),
            touches_workers: kind.touches_workers(),
        };
        info!(fault = record.kind, detail = %record.detail, "fault healed");
        Ok(Some(record))
    }

    /// The lost-disk procedure: remove the member, stop it, wipe its data dir, start it empty
    /// and add it back; it catches up by snapshot or log.
    async fn wipe(&mut self, id: u64) -> anyhow::Result<String> {
        self.admin
            .remove_replica(id)
            .await
            .with_context(|| format!("remove replica {id}"))?;
        self.cluster.stop(id, Duration::from_secs(10)).await?;
        self.cluster.wipe(id)?;
        self.cluster.restart(id)?;
        let (api, peer) = {
            let replica = self.cluster.replica(id)?;
            (replica.api_addr.clone(), replica.peer_addr.clone())
        };
        // The empty replica needs a moment to listen; add-replica says so until it does.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self
                .admin
                .add_replica(id, &api, &peer, Duration::from_secs(60))
                .await
            {
                Ok(_) => break,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, replica = id, "add-replica not yet possible");
                    sleep(Duration::from_millis(300)).await;
                }
                Err(error) => return Err(error).context(format!("add replica {id} back")),
            }
        }
        Ok(format!("replica {id} removed, wiped and added back"))
    }

    /// Kills every replica of `ids` at once (kill -9), then cuts their disks' power: what they
    /// wrote and did not sync is gone (a torn write may survive in part). Says what was lost.
    fn power_cut(&mut self, ids: &[u64]) -> anyhow::Result<String> {
        for id in ids {
            anyhow::ensure!(
                self.power.contains_key(id),
                "replica {id}'s data dir is not on a power-cut mount"
            );
            self.cluster.kill(*id)?;
        }
        let (mut files, mut bytes) = (0, 0);
        for id in ids {
            let report = self.power[id].cut(Some(self.rng.gen()));
            files += report.files;
            bytes += report.lost_bytes;
        }
        Ok(format!("{bytes} unsynced bytes lost in {files} files"))
    }

    /// Restarts any process that exited by itself since the last look, and remembers it: a
    /// crash is a finding of the run.
    pub fn restart_crashed(&mut self) -> anyhow::Result<()> {
        for exited in self.cluster.reap_exited() {
            tracing::warn!(process = %exited, "a process exited by itself; restarting it");
            self.crashes.push(exited);
        }
        let stopped: Vec<u64> = self
            .cluster
            .replicas
            .iter()
            .filter(|r| !r.is_running())
            .map(|r| r.id)
            .collect();
        for id in stopped {
            self.cluster.restart(id)?;
        }
        let stopped: Vec<String> = self
            .cluster
            .workers
            .iter()
            .filter(|w| w.pid().is_none())
            .map(|w| w.name.clone())
            .collect();
        for name in stopped {
            self.cluster.restart_worker(&name)?;
        }
        Ok(())
    }

    fn worker_name(&mut self) -> anyhow::Result<String> {
        anyhow::ensure!(
            !self.cluster.workers.is_empty(),
            "worker faults need a worker"
        );
        let index = self.rng.gen_range(0..self.cluster.workers.len());
        Ok(self.cluster.workers[index].name.clone())
    }

    fn between(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(min_ms..=max_ms))
    }
}
