//! `scaleout workers …`: the worker registry.

use clap::Subcommand;
use serde_json::json;

use super::job::format_ms;
use super::table::print_table;
use super::{CliError, ClientArgs, Output};
use crate::pb::v1::{self, WorkerAction};

#[derive(Subcommand)]
pub enum WorkersCommand {
    /// Every registered worker: online or offline, last heartbeat, running tasks.
    List(ClientArgs),
    /// Let a worker take tasks (a new worker starts disabled when approval is manual).
    Enable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop giving a worker tasks.
    Disable {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let a worker finish what it runs and take nothing new.
    Drain {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an idle worker from the registry.
    Remove {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

impl WorkersCommand {
    pub async fn run(self) -> Result<(), CliError> {
        match self {
            WorkersCommand::List(client) => workers_list(&client).await,
            WorkersCommand::Enable { id, client } => {
                workers_set(&id, WorkerAction::Enable, &client).await
            }
            WorkersCommand::Disable { id, client } => {
                workers_set(&id, WorkerAction::Disable, &client).await
            }
            WorkersCommand::Drain { id, client } => {
                workers_set(&id, WorkerAction::Drain, &client).await
            }
            WorkersCommand::Remove { id, client } => workers_remove(&id, &client).await,
        }
    }
}

/// `workers list`.
pub async fn workers_list(args: &ClientArgs) -> Result<(), CliError> {
    let workers = args.client()?.list_workers(args.stale).await?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::Value::Array(workers.iter().map(worker_json).collect())
        ),
        Output::Table => {
            let rows: Vec<Vec<String>> = workers
                .iter()
                .map(|w| {
                    let info = w.info.clone().unwrap_or_default();
                    let state = match (w.enabled, w.draining) {
                        (false, _) => "disabled",
                        (true, true) => "draining",
                        (true, false) => "enabled",
                    };
                    vec![
                        info.worker_id,
                        info.display_name,
                        if w.online { "online" } else { "offline" }.to_string(),
                        state.to_string(),
                        format!("{}/{}", w.running_jobs.len(), info.max_tasks),
                        info.tags.join(","),
                        format_ms(w.last_heartbeat_ms),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "NAME",
                    "STATUS",
                    "STATE",
                    "RUNNING",
                    "TAGS",
                    "LAST HEARTBEAT",
                ],
                &rows,
            );
        }
    }
    Ok(())
}

/// `workers enable|disable|drain ID`.
pub async fn workers_set(
    id: &str,
    action: v1::WorkerAction,
    args: &ClientArgs,
) -> Result<(), CliError> {
    let worker = args.client()?.set_worker_state(id, action).await?;
    match args.output {
        Output::Json => println!("{}", worker_json(&worker)),
        Output::Table => {
            let state = match (worker.enabled, worker.draining) {
                (false, _) => "disabled",
                (true, true) => "draining",
                (true, false) => "enabled",
            };
            println!("worker {id} is {state}");
        }
    }
    Ok(())
}

/// `workers remove ID`.
pub async fn workers_remove(id: &str, args: &ClientArgs) -> Result<(), CliError> {
    args.client()?.remove_worker(id).await?;
    if args.output == Output::Table {
        println!("worker {id} removed");
    } else {
        println!("{}", json!({"removed": id}));
    }
    Ok(())
}

pub fn worker_json(worker: &v1::Worker) -> serde_json::Value {
    let info = worker.info.clone().unwrap_or_default();
    json!({
        "id": info.worker_id,
        "display_name": info.display_name,
        "description": info.description,
        "machine_name": info.machine_name,
        "tags": info.tags,
        "max_tasks": info.max_tasks,
        "version": info.version,
        "enabled": worker.enabled,
        "draining": worker.draining,
        "online": worker.online,
        "registered_at_ms": worker.registered_at_ms,
        "last_heartbeat_ms": worker.last_heartbeat_ms,
        "running_jobs": worker.running_jobs,
        "cpu_percent": worker.cpu_percent,
        "free_memory_mb": worker.free_memory_mb,
    })
}
