//! `scaleout cluster …`: the replicas, and membership changes.

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::{CliError, ClientArgs, Output};
use crate::pb::v1::ClusterStatusResponse;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Members, leader, term, and commit/applied index per replica.
    Status(ClientArgs),
    /// Add a running replica: it joins as a learner, catches up, then becomes a voter (joint
    /// consensus). Start it first with an empty data dir and a config that lists the members
    /// and itself.
    AddReplica {
        /// The new replica's id (its config's `id`).
        id: u64,
        /// The address clients and workers dial (its `api`).
        #[arg(long)]
        api: String,
        /// The address the other replicas dial (its `peer`).
        #[arg(long)]
        peer: String,
        /// How long to wait for it to catch up before it becomes a voter (at most 50; run the
        /// command again to wait longer: the replica keeps catching up as a learner).
        #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..=50))]
        catch_up_secs: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a replica from the membership (joint consensus); stop its process afterwards.
    RemoveReplica {
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Hand leadership to another voter without an election timeout (before maintenance on
    /// the leader's host; a leader stopped with SIGTERM does it by itself).
    TransferLeader {
        /// The voter to hand over to; by default the most up-to-date one.
        id: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl ClusterCommand {
    pub async fn run(self) -> Result<(), CliError> {
        match self {
            ClusterCommand::Status(client) => cluster_status(&client).await,
            ClusterCommand::AddReplica {
                id,
                api,
                peer,
                catch_up_secs,
                client,
            } => {
                cluster_add_replica(id, &api, &peer, Duration::from_secs(catch_up_secs), &client)
                    .await
            }
            ClusterCommand::RemoveReplica { id, client } => {
                cluster_remove_replica(id, &client).await
            }
            ClusterCommand::TransferLeader { id, client } => {
                cluster_transfer_leader(id, &client).await
            }
        }
    }
}

pub async fn cluster_status(args: &ClientArgs) -> Result<(), CliError> {
    let status = args.client()?.cluster_status().await?;
    match args.output {
        Output::Json => println!("{}", cluster_json(&status)),
        Output::Table => print_cluster(&status),
    }
    super::status::no_majority(&status)
}

/// `cluster add-replica ID --api ADDR --peer ADDR`.
pub async fn cluster_add_replica(
    id: u64,
    api: &str,
    peer: &str,
    catch_up: Duration,
    args: &ClientArgs,
) -> Result<(), CliError> {
    let added = args.client()?.add_replica(id, api, peer, catch_up).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            json!({"added": id, "voters": added.voters, "log_index": added.log_index})
        ),
        Output::Table if added.log_index == 0 => {
            println!(
                "replica {id} is already a voter; voters: {:?}",
                added.voters
            )
        }
        Output::Table => println!(
            "replica {id} caught up and is a voter (entry {}); voters: {:?}",
            added.log_index, added.voters
        ),
    }
    Ok(())
}

/// `cluster transfer-leader [ID]`.
pub async fn cluster_transfer_leader(to: Option<u64>, args: &ClientArgs) -> Result<(), CliError> {
    let handed = args.client()?.transfer_leader(to).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            json!({
                "from": handed.from,
                "leader_id": handed.leader_id,
                "leader_addr": handed.leader_addr,
                "term": handed.term,
                "elapsed_ms": handed.elapsed_ms,
            })
        ),
        Output::Table => println!(
            "replica {} leads now (term {}, at {}), handed over by replica {} in {} ms",
            handed.leader_id, handed.term, handed.leader_addr, handed.from, handed.elapsed_ms
        ),
    }
    Ok(())
}

/// `cluster remove-replica ID`.
pub async fn cluster_remove_replica(id: u64, args: &ClientArgs) -> Result<(), CliError> {
    let removed = args.client()?.remove_replica(id).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            json!({"removed": id, "voters": removed.voters, "log_index": removed.log_index})
        ),
        Output::Table if removed.log_index == 0 => println!(
            "replica {id} is not a member; nothing changed (voters: {:?})",
            removed.voters
        ),
        Output::Table => {
            println!(
                "replica {id} removed (entry {}); voters: {:?}; stop its process now",
                removed.log_index, removed.voters
            );
            if removed.voters.len() % 2 == 0 {
                println!(
                    "note: {} voters tolerate no more failures than {}; add one back or remove \
                     another",
                    removed.voters.len(),
                    removed.voters.len() - 1
                );
            }
        }
    }
    Ok(())
}

pub fn cluster_json(status: &ClusterStatusResponse) -> serde_json::Value {
    json!({
        "leader_id": status.leader_id,
        "leader_api_addr": status.leader_api_addr,
        "term": status.term,
        "answered_by": status.answered_by,
        "outbox": {
            "events": status.outbox_events,
            "shipped_up_to": status.outbox_shipped_up_to,
            "dropped_log_events": status.outbox_dropped_log_events,
        },
        "jobs": super::screen::job_counts_json(status.job_counts.as_ref()),
        "replicas": status.replicas.iter().map(|r| json!({
            "id": r.id,
            "api_addr": r.api_addr,
            "peer_addr": r.peer_addr,
            "reachable": r.reachable,
            "error": r.error,
            "role": r.role,
            "voter": r.voter,
            "term": r.term,
            "leader_id": r.leader_id,
            "commit_index": r.commit_index,
            "applied_index": r.applied_index,
            "last_log_index": r.last_log_index,
            "version": r.version,
        })).collect::<Vec<_>>(),
        "majority_up": super::screen::Quorum::of(status).majority_up(),
    })
}

fn print_cluster(status: &ClusterStatusResponse) {
    if let Some(warning) = super::screen::Quorum::of(status).warning() {
        println!("{warning}");
    }
    match status.leader_id {
        Some(id) => println!(
            "leader: replica {id} at {}  term: {}  (answered by replica {})",
            status.leader_api_addr, status.term, status.answered_by
        ),
        None => println!(
            "leader: none known (election under way)  term: {}  (answered by replica {})",
            status.term, status.answered_by
        ),
    }
    for line in super::screen::replica_table(status, true) {
        println!("{line}");
    }
    println!(
        "outbox (replica {}): {} events waiting for SSISDB, shipped up to event {}, {} log line events left out",
        status.answered_by,
        status.outbox_events,
        status.outbox_shipped_up_to,
        status.outbox_dropped_log_events
    );
}
