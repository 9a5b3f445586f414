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
    let client = args.client()?;
    let id = &resolve_worker(&client, id).await?;
    let worker = client.set_worker_state(id, action).await?;
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
    let client = args.client()?;
    let id = &resolve_worker(&client, id).await?;
    client.remove_worker(id).await?;
    if args.output == Output::Table {
        println!("worker {id} removed");
    } else {
        println!("{}", json!({"removed": id}));
    }
    Ok(())
}

/// The worker `given` names: its whole id, a prefix of one id (as `status` shows 8
/// characters), or its display name. Anything else is a usage error that says what matched.
pub async fn resolve_worker(
    client: &crate::client::Client,
    given: &str,
) -> Result<String, CliError> {
    let given = given.trim();
    if uuid::Uuid::parse_str(given).is_ok() {
        return Ok(given.to_string());
    }
    let workers = client.list_workers(false).await?;
    let pick = pick_worker(&workers, given).map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
    Ok(pick)
}

/// [`resolve_worker`] on a listed registry.
fn pick_worker(workers: &[v1::Worker], given: &str) -> Result<String, String> {
    let infos: Vec<v1::WorkerInfo> = workers.iter().filter_map(|w| w.info.clone()).collect();
    let lower = given.to_ascii_lowercase();
    let by_name: Vec<&v1::WorkerInfo> = infos.iter().filter(|i| i.display_name == given).collect();
    let by_prefix: Vec<&v1::WorkerInfo> = infos
        .iter()
        .filter(|i| !lower.is_empty() && i.worker_id.to_ascii_lowercase().starts_with(&lower))
        .collect();
    let matches = if by_name.is_empty() {
        by_prefix
    } else {
        by_name
    };
    let shown = |list: &[&v1::WorkerInfo]| {
        list.iter()
            .map(|i| format!("{} ({})", i.worker_id, i.display_name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match matches.as_slice() {
        [one] => Ok(one.worker_id.clone()),
        [] => Err(format!(
            "no worker has the id, id prefix or name {given:?}; `scaleout workers list` shows \
             them"
        )),
        many => Err(format!(
            "{given:?} matches {} workers: {}; give more of the id",
            many.len(),
            shown(many)
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, name: &str) -> v1::Worker {
        v1::Worker {
            info: Some(v1::WorkerInfo {
                worker_id: id.into(),
                display_name: name.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_worker_is_named_by_a_unique_id_prefix_or_its_name() {
        let workers = [
            worker("0b5c4c1e-1111-4000-8000-000000000001", "etl-1"),
            worker("0b5c9999-2222-4000-8000-000000000002", "etl-2"),
            worker("7f000000-3333-4000-8000-000000000003", "0b5c"),
        ];
        assert_eq!(
            pick_worker(&workers, "0b5c4c1e"),
            Ok("0b5c4c1e-1111-4000-8000-000000000001".into())
        );
        assert_eq!(
            pick_worker(&workers, "0B5C4"),
            Ok("0b5c4c1e-1111-4000-8000-000000000001".into()),
            "ids are hex: any case"
        );
        assert_eq!(
            pick_worker(&workers, "etl-2"),
            Ok("0b5c9999-2222-4000-8000-000000000002".into())
        );
        // A name wins over the id prefixes it also is.
        assert_eq!(
            pick_worker(&workers, "0b5c"),
            Ok("7f000000-3333-4000-8000-000000000003".into())
        );
        let ambiguous = pick_worker(&workers, "0b5").unwrap_err();
        assert!(
            ambiguous.contains("matches 2 workers") && ambiguous.contains("etl-1"),
            "{ambiguous}"
        );
        let none = pick_worker(&workers, "zz").unwrap_err();
        assert!(none.contains("no worker"), "{none}");
        assert!(pick_worker(&workers, "").is_err());
    }
}
