//! `scaleout status`: one screen of the whole system, once or `--watch`ed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::screen::{self, Frame, Layout};
use super::{shutdown_signal, CliError, ClientArgs, Output, EXIT_UNAVAILABLE};
use crate::client::{Client, ClientError};
use crate::pb::v1::ClusterStatusResponse;
use crate::transport::Security;

/// `scaleout status`: the client's options and how often to redraw.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Redraw every SECS seconds (2 when SECS is left out) until Ctrl-C.
    #[arg(
        long,
        value_name = "SECS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub watch: Option<u64>,
    /// With --watch: stop after this many frames (for scripts and tests).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub frames: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// How long a frame waits for any one replica. Every replica is asked at once, so one that
/// is dead or frozen costs a frame this much at most, never the client's whole deadline; it is
/// above the 1.5 s an answering replica gives each member's status.
const ASK_DEADLINE: Duration = Duration::from_millis(2500);

/// Where the status frames come from: every endpoint (and the last leader) is asked for
/// ClusterStatus at once, each with a short deadline; the leader's own answer is kept when one
/// came (its job counts are the freshest and it asked every member itself), else the newest
/// term's. ListWorkers goes to the replica that answered: linearizable at a leader, stale
/// elsewhere (without a leader a linearizable read would only wait out the deadline).
struct FrameSource {
    endpoints: Vec<String>,
    security: Security,
    deadline: Duration,
    stale: bool,
    /// One client per address asked, kept so that frames reuse their connections.
    clients: BTreeMap<String, Arc<Client>>,
    /// The API address of the leader of the last frame, asked next time even when it is not
    /// among the endpoints.
    leader: Option<String>,
}

impl FrameSource {
    fn new(args: &ClientArgs) -> Result<FrameSource, CliError> {
        let security = args.tls.security()?;
        let endpoints = Client::new(&args.endpoints, security.clone())?
            .endpoints()
            .to_vec();
        Ok(FrameSource {
            endpoints,
            security,
            deadline: Duration::from_secs(args.timeout_secs).min(ASK_DEADLINE),
            stale: args.stale,
            clients: BTreeMap::new(),
            leader: None,
        })
    }

    fn client(&mut self, addr: &str) -> Result<Arc<Client>, ClientError> {
        if let Some(client) = self.clients.get(addr) {
            return Ok(client.clone());
        }
        let client = Arc::new(
            Client::new(&[addr], self.security.clone())?
                .with_deadline(self.deadline)
                .failing_fast(),
        );
        self.clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// One frame, and the error that kept every replica from answering, if one did.
    async fn take(&mut self) -> (Frame, Option<ClientError>) {
        let (cluster, workers, error) = match self.cluster_status().await {
            Ok((status, from)) => {
                let stale = self.stale || status.leader_id != Some(status.answered_by);
                let workers = from.list_workers(stale).await.map_err(|e| e.to_string());
                (Ok(status), workers, None)
            }
            Err(error) => (
                Err(error.to_string()),
                Err("not asked: no replica answered".to_string()),
                Some(error),
            ),
        };
        let frame = Frame {
            taken_at_ms: crate::wall_time::now_ms(),
            cluster,
            workers,
            endpoints: self.endpoints.clone(),
        };
        (frame, error)
    }

    /// The best ClusterStatus any replica gave, and a client of the replica that gave it.
    async fn cluster_status(
        &mut self,
    ) -> Result<(ClusterStatusResponse, Arc<Client>), ClientError> {
        let mut asked = self.endpoints.clone();
        if let Some(leader) = self.leader.take() {
            if !asked.contains(&leader) {
                asked.push(leader);
            }
        }
        let mut answers = self.ask(&asked).await?;
        let mut best = best_answer(&answers);
        // A follower named a leader that is not among the endpoints: its own view is better.
        let named = best
            .and_then(|i| answers[i].1.as_ref().ok())
            .filter(|status| !from_leader(status) && status.leader_id.is_some())
            .map(|status| status.leader_api_addr.clone())
            .filter(|named| !named.is_empty() && !asked.contains(named));
        if let Some(named) = named {
            answers.extend(self.ask(&[named]).await?);
            best = best_answer(&answers);
        }
        let Some(best) = best else {
            return Err(no_answer(answers.into_iter().filter_map(|(_, a)| a.err())));
        };
        let (client, status) = answers.swap_remove(best);
        let status = status.unwrap_or_default();
        if from_leader(&status) && !status.leader_api_addr.is_empty() {
            self.leader = Some(status.leader_api_addr.clone());
        }
        Ok((status, client))
    }

    /// Asks every address at once.
    async fn ask(
        &mut self,
        addrs: &[String],
    ) -> Result<Vec<(Arc<Client>, Result<ClusterStatusResponse, ClientError>)>, ClientError> {
        let clients = addrs
            .iter()
            .map(|addr| self.client(addr))
            .collect::<Result<Vec<_>, _>>()?;
        let answers =
            futures::future::join_all(clients.iter().map(|client| client.cluster_status())).await;
        Ok(clients.into_iter().zip(answers).collect())
    }
}

/// Why no replica answered: each one's refusal when none accepted a connection, else the
/// first other error (a timeout says more than a refusal next to it).
fn no_answer(errors: impl Iterator<Item = ClientError>) -> ClientError {
    let mut refusals = Vec::new();
    for error in errors {
        match error {
            ClientError::Unreachable { each } => refusals.push(each),
            other => return other,
        }
    }
    match refusals.is_empty() {
        true => ClientError::NoEndpoints,
        false => ClientError::Unreachable {
            each: refusals.join("; "),
        },
    }
}

fn from_leader(status: &ClusterStatusResponse) -> bool {
    status.leader_id == Some(status.answered_by)
}

/// Which answer a frame shows: the newest term's, its leader's if it answered, else the one
/// that reached the most replicas, else the first.
fn best_answer<C>(answers: &[(C, Result<ClusterStatusResponse, ClientError>)]) -> Option<usize> {
    answers
        .iter()
        .enumerate()
        .filter_map(|(i, (_, answer))| answer.as_ref().ok().map(|status| (i, status)))
        .max_by_key(|(i, status)| {
            let reached = status.replicas.iter().filter(|r| r.reachable).count();
            (
                status.term,
                from_leader(status),
                reached,
                std::cmp::Reverse(*i),
            )
        })
        .map(|(i, _)| i)
}

/// Writes a frame to standard output; `Ok(false)` when the reader has gone away (`| head`).
fn print_frame(
    frame: &Frame,
    output: Output,
    layout: Layout,
    terminal: bool,
) -> Result<bool, CliError> {
    match screen::write_frame(
        &mut std::io::stdout().lock(),
        frame,
        output,
        layout,
        terminal,
    ) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::failed(anyhow!(
            "cannot write to standard output: {e}"
        ))),
    }
}

/// The lines a frame may take: the terminal's height, or a classic terminal's when standard
/// output is not one (or does not say).
fn screen_lines(terminal: bool) -> usize {
    terminal
        .then(terminal_size::terminal_size)
        .flatten()
        .map_or(screen::SCREEN_LINES, |(_, height)| usize::from(height.0))
}

/// Exit code 3 (unavailable) when the answering replica reaches no majority of the voters:
/// the screen was drawn, but a script must not read it as a healthy cluster.
pub fn no_majority(status: &ClusterStatusResponse) -> Result<(), CliError> {
    match screen::Quorum::of(status).warning() {
        None => Ok(()),
        Some(warning) => Err(CliError {
            code: EXIT_UNAVAILABLE,
            error: anyhow!("{warning}"),
        }),
    }
}

/// `scaleout status [--watch [SECS]] [--frames N]`: the cluster, its workers and its queue on
/// one screen. Without --watch it exits 3 when no replica answers or they reach no majority.
pub async fn status(args: &StatusArgs) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if let (None, Some(frames @ 2..)) = (args.watch, args.frames) {
        return Err(CliError::usage(anyhow!(
            "--frames {frames} needs --watch: without it, status draws one frame"
        )));
    }
    let mut source = FrameSource::new(&args.client)?;
    let output = args.client.output;
    let terminal = std::io::stdout().is_terminal();
    let layout = Layout {
        max_lines: screen_lines(terminal),
        every_secs: args.watch,
    };
    let Some(every_secs) = args.watch else {
        let (frame, error) = source.take().await;
        print_frame(&frame, output, layout, terminal)?;
        if let Some(error) = error {
            return Err(error.into());
        }
        return match &frame.cluster {
            Ok(status) => no_majority(status),
            Err(_) => Ok(()),
        };
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(Duration::from_secs(every_secs));
    // A frame slower than the interval delays the next one rather than bunching them up.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drawn = 0;
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            _ = ticks.tick() => {}
        }
        let frame = tokio::select! {
            () = &mut stop => return Ok(()),
            (frame, _) = source.take() => frame,
        };
        if !print_frame(&frame, output, layout, terminal)? {
            return Ok(());
        }
        drawn += 1;
        if args.frames.is_some_and(|frames| drawn >= frames) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::v1::ReplicaStatus;

    fn answer(
        term: u64,
        answered_by: u64,
        leader: Option<u64>,
        reached: usize,
    ) -> ClusterStatusResponse {
        ClusterStatusResponse {
            term,
            answered_by,
            leader_id: leader,
            replicas: (0..reached)
                .map(|i| ReplicaStatus {
                    id: i as u64 + 1,
                    reachable: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_frame_shows_the_newest_term_and_its_leader_first() {
        let refused = || Err(ClientError::NoEndpoints);
        let answers: Vec<((), Result<ClusterStatusResponse, ClientError>)> = vec![
            ((), refused()),
            ((), Ok(answer(5, 1, Some(1), 1))),
            ((), Ok(answer(6, 2, Some(3), 3))),
            ((), Ok(answer(6, 3, Some(3), 2))),
        ];
        // A deposed leader's older term loses; in the newest term the leader's own answer wins
        // over a follower's that reached more replicas.
        assert_eq!(best_answer(&answers), Some(3));
        let followers = vec![
            ((), Ok(answer(6, 1, None, 2))),
            ((), Ok(answer(6, 2, None, 3))),
        ];
        assert_eq!(
            best_answer(&followers),
            Some(1),
            "the one that reached most"
        );
        let deposed = vec![
            ((), Ok(answer(5, 1, Some(1), 1))),
            ((), Ok(answer(6, 2, Some(3), 2))),
        ];
        assert_eq!(
            best_answer(&deposed),
            Some(1),
            "a follower of the newer term"
        );
        assert_eq!(best_answer(&[((), refused())]), None);
    }
}
