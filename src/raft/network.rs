//! The Raft transport's client side: one reused gRPC channel per peer, a deadline on every call,
//! and errors classified so openraft backs off from dead peers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::handover::{Handover, HANDOVER_HEADER};
use super::lease::LeaderTerm;
use super::peer_links::{LinkChange, PeerLinks};
use super::{NodeId, ReplicaNode, TypeConfig};
use crate::pb::raft::raft_service_client::RaftServiceClient;
use crate::pb::raft::RaftPayload;
use crate::transport::Security;

/// Snapshot chunks get at least this long. (Appends and votes cannot: openraft 0.9 wraps each
/// append in its own timeout of one heartbeat interval, which is why appends are kept small
/// (see `MAX_APPEND_ENTRIES` in the replica's raft settings), and each vote request in one of
/// its `election_timeout_min`, which is one heartbeat plus 1 ms (`lease::openraft_timeouts`).)
pub const PEER_RPC_TIMEOUT_FLOOR: Duration = Duration::from_millis(1000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type RpcError<E = openraft::error::Infallible> =
    RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>;

/// A request carrying `message` (bincode) to member `node`, addressed to the data dir the
/// membership admitted for it (`admission.rs`): for the peer RPCs outside openraft's
/// (pre-vote, `TimeoutNow`, `WatchLeader`).
pub fn peer_request<T: Serialize>(
    node: &ReplicaNode,
    message: &T,
) -> Result<tonic::Request<RaftPayload>, String> {
    let data = bincode::serialize(message).map_err(|e| format!("cannot encode: {e}"))?;
    let mut request = tonic::Request::new(RaftPayload { data });
    if let Some(storage_id) = node.storage_id {
        let value = tonic::metadata::MetadataValue::try_from(storage_id.to_string())
            .map_err(|e| format!("storage id {storage_id} is not a header value: {e}"))?;
        request
            .metadata_mut()
            .insert(super::admission::STORAGE_ID_HEADER, value);
    }
    Ok(request)
}

/// Creates the per-peer clients openraft asks for, sharing one channel per peer address.
#[derive(Clone)]
pub struct PeerNetwork {
    my_id: NodeId,
    max_message_bytes: usize,
    security: Security,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    /// `peer_routes`: members this replica dials somewhere else than their `peer` address.
    routes: Arc<BTreeMap<NodeId, String>>,
    /// When each peer last answered this replica as leader or candidate (CheckQuorum).
    heard: Arc<PeerAnswers>,
    /// A leader's hand-over to this replica, shown with its vote requests.
    handover: Arc<Handover>,
    /// Whether each peer answers, for the log.
    links: Arc<PeerLinks>,
}

/// When each peer last accepted this replica's vote: answered an append without a higher vote,
/// took a snapshot chunk under it, or granted a vote. A peer never heard from counts from when
/// this replica started, so a leader restored at start-up is not refused before its first round
/// trip.
#[derive(Debug)]
pub struct PeerAnswers {
    started: std::time::Instant,
    last: Mutex<BTreeMap<NodeId, std::time::Instant>>,
}

impl Default for PeerAnswers {
    fn default() -> Self {
        PeerAnswers {
            started: std::time::Instant::now(),
            last: Mutex::default(),
        }
    }
}

impl PeerAnswers {
    fn record(&self, peer: NodeId) {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(peer, std::time::Instant::now());
    }

    /// How long since `peer` last answered (since this replica started, if never).
    pub fn silent_for(&self, peer: NodeId) -> Duration {
        let last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&peer)
            .copied()
            .unwrap_or(self.started);
        last.elapsed()
    }
}

impl PeerNetwork {
    pub fn new(my_id: NodeId, max_message_bytes: usize, security: Security) -> Self {
        PeerNetwork {
            my_id,
            max_message_bytes,
            security,
            channels: Arc::default(),
            routes: Arc::default(),
            heard: Arc::default(),
            handover: Arc::default(),
            links: Arc::default(),
        }
    }

    /// This replica's hand-over state (`handover.rs`).
    pub fn handover(&self) -> Arc<Handover> {
        self.handover.clone()
    }

    /// When each peer last answered this replica as leader or candidate.
    pub fn answers(&self) -> Arc<PeerAnswers> {
        self.heard.clone()
    }

    /// Dials member `id` at `address` instead of its `peer` address (`peer_routes`).
    pub fn with_routes(mut self, routes: impl IntoIterator<Item = (NodeId, String)>) -> Self {
        self.routes = Arc::new(routes.into_iter().collect());
        self
    }

    /// Where this replica dials member `id`, whose advertised peer address is `peer_addr`.
    pub fn address_of<'a>(&'a self, id: NodeId, peer_addr: &'a str) -> &'a str {
        self.routes.get(&id).map_or(peer_addr, String::as_str)
    }

    /// The channel to member `id` (advertised at `peer_addr`), through its route if it has one.
    pub fn channel_to(
        &self,
        id: NodeId,
        peer_addr: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        self.channel(self.address_of(id, peer_addr))
    }

    /// A new channel to member `id`, shared with nothing: its first call makes a connection.
    pub fn fresh_channel_to(
        &self,
        id: NodeId,
        peer_addr: &str,
    ) -> Result<Channel, tonic::transport::Error> {
        self.security
            .channel(self.address_of(id, peer_addr), |endpoint| {
                endpoint.connect_timeout(CONNECT_TIMEOUT)
            })
    }

    /// The channel to `peer_addr`, created on first use. The channel reconnects by itself, so a
    /// restarted peer is reached again without a new one.
    pub fn channel(&self, peer_addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(peer_addr) {
            return Ok(channel.clone());
        }
        let channel = self.security.channel(peer_addr, |endpoint| {
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
        })?;
        channels.insert(peer_addr.to_string(), channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ReplicaNode) -> PeerClient {
        let client = self.channel_to(target, &node.peer_addr).map(|channel| {
            RaftServiceClient::new(channel)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes)
        });
        PeerClient {
            links: self.links.clone(),
            link_failure: None,
            heard: self.heard.clone(),
            handover: self.handover.clone(),
            my_id: self.my_id,
            max_message_bytes: self.max_message_bytes,
            target,
            peer_addr: node.peer_addr.clone(),
            expected_storage_id: node
                .storage_id
                .and_then(|id| tonic::metadata::MetadataValue::try_from(id.to_string()).ok()),
            client: client.map_err(|e| e.to_string()),
        }
    }
}

/// One peer as openraft sees it.
pub struct PeerClient {
    links: Arc<PeerLinks>,
    /// Why the last message did not reach the peer, when it did not.
    link_failure: Option<String>,
    heard: Arc<PeerAnswers>,
    handover: Arc<Handover>,
    my_id: NodeId,
    max_message_bytes: usize,
    target: NodeId,
    peer_addr: String,
    /// The storage id the membership names for the target, sent with every message: the target
    /// refuses messages meant for another data dir (`admission.rs`).
    expected_storage_id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// An invalid address is reported on every call rather than panicking at creation.
    client: Result<RaftServiceClient<Channel>, String>,
}

#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("peer address {addr:?} is not valid: {message}")]
    BadAddress { addr: String, message: String },
    #[error("peer {addr}: {}: {}", status.code(), status.message())]
    Status { addr: String, status: tonic::Status },
    #[error("cannot encode or decode a raft message: {0}")]
    Codec(#[from] bincode::Error),
    #[error("a raft message of {bytes} bytes is over the peer message limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
}

impl PeerClient {
    /// [`PeerClient::send`], and the peer's link state logged when it changes.
    async fn call<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        request: &Req,
        entries: usize,
        option: &RPCOption,
        ticket: Option<LeaderTerm>,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        self.link_failure = None;
        let result = self.send(action, request, entries, option, ticket).await;
        let now = std::time::Instant::now();
        let change = match (&result, self.link_failure.take()) {
            (Err(_), Some(reason)) => self
                .links
                .failed(self.target, now)
                .map(|change| (change, Some(reason))),
            (Ok(_) | Err(RPCError::RemoteError(_)), _) => self
                .links
                .answered(self.target, now)
                .map(|change| (change, None)),
            (Err(_), None) => None,
        };
        match change {
            Some((LinkChange::Lost { failing_for }, reason)) => tracing::warn!(
                peer = self.target,
                peer_addr = %self.peer_addr,
                failing_ms = failing_for.as_millis() as u64,
                error = reason.unwrap_or_default(),
                "peer unreachable; retrying quietly until it answers"
            ),
            Some((LinkChange::Back { gone_for }, _)) => tracing::info!(
                peer = self.target,
                peer_addr = %self.peer_addr,
                gone_ms = gone_for.as_millis() as u64,
                "peer reachable again"
            ),
            None => {}
        }
        result
    }

    /// `entries`: how many log entries the request carries, so an append too large for one
    /// message can be split (openraft resends fewer entries on `PayloadTooLarge`). `ticket`: a
    /// hand-over to show the voters (`handover.rs`).
    async fn send<Req, Resp, E>(
        &mut self,
        action: RPCTypes,
        request: &Req,
        entries: usize,
        option: &RPCOption,
        ticket: Option<LeaderTerm>,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl().max(PEER_RPC_TIMEOUT_FLOOR);
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(message) => {
                let error = TransportError::BadAddress {
                    addr: self.peer_addr.clone(),
                    message: message.clone(),
                };
                self.link_failure = Some(error.to_string());
                return Err(RPCError::Unreachable(Unreachable::new(&error)));
            }
        };
        let data = bincode::serialize(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Codec(e))))?;
        if data.len() > self.max_message_bytes {
            if entries > 1 {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2) as u64),
                ));
            }
            // One entry is at most one proposal batch, which the proposer keeps well under the
            // peer limit; reaching this means the limits were set inconsistently.
            let error = TransportError::TooLarge {
                bytes: data.len(),
                limit: self.max_message_bytes,
            };
            tracing::error!(%error, target = self.target, "cannot send a raft message");
            return Err(RPCError::Network(NetworkError::new(&error)));
        }
        let mut grpc_request = tonic::Request::new(RaftPayload { data });
        grpc_request.set_timeout(timeout);
        if let Some(expected) = &self.expected_storage_id {
            grpc_request
                .metadata_mut()
                .insert(super::admission::STORAGE_ID_HEADER, expected.clone());
        }
        if let Some(ticket) = ticket {
            ticket.insert_into(grpc_request.metadata_mut(), HANDOVER_HEADER);
        }
        let call = async {
            match action {
                RPCTypes::Vote => client.vote(grpc_request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(grpc_request).await,
                _ => client.append_entries(grpc_request).await,
            }
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                self.link_failure = Some(format!(
                    "peer {}: no answer within {} ms",
                    self.peer_addr,
                    timeout.as_millis()
                ));
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.my_id,
                    target: self.target,
                    timeout,
                }));
            }
            Ok(Err(status)) => {
                // A replica that refuses us (FAILED_PRECONDITION: it is not the data dir the
                // membership admitted, or it may not vote) is as good as unreachable: openraft
                // backs off instead of retrying at once.
                let unreachable = matches!(
                    status.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                        | tonic::Code::FailedPrecondition
                );
                let error = TransportError::Status {
                    addr: self.peer_addr.clone(),
                    status,
                };
                self.link_failure = Some(error.to_string());
                return Err(if unreachable {
                    RPCError::Unreachable(Unreachable::new(&error))
                } else {
                    RPCError::Network(NetworkError::new(&error))
                });
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Codec(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let entries = rpc.entries.len();
        let reply: AppendEntriesResponse<NodeId> = self
            .call(RPCTypes::AppendEntries, &rpc, entries, &option, None)
            .await?;
        if !matches!(reply, AppendEntriesResponse::HigherVote(_)) {
            self.heard.record(self.target);
        }
        Ok(reply)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let sender = rpc.vote;
        let reply: InstallSnapshotResponse<NodeId> = self
            .call(RPCTypes::InstallSnapshot, &rpc, 1, &option, None)
            .await?;
        if reply.vote == sender {
            self.heard.record(self.target);
        }
        Ok(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let ticket = self.handover.ticket_for(rpc.vote.leader_id().term);
        let reply: VoteResponse<NodeId> =
            self.call(RPCTypes::Vote, &rpc, 1, &option, ticket).await?;
        if reply.vote_granted {
            self.heard.record(self.target);
        }
        Ok(reply)
    }

    /// After `Unreachable`, openraft waits along this sequence before trying the peer again:
    /// quick at first so a restarted peer rejoins fast, then capped so a dead one costs little.
    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|attempt: u32| Duration::from_millis(50u64 << attempt.min(3))))
    }
}
