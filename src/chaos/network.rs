//! The chaos cluster's network: a [`LinkProxy`] on every directed replica-to-replica link
//! (replica `i` dials replica `j` through its own proxy, set by `[[peer_routes]]`) and one in
//! front of every replica's API (the address workers and clients are given), so partitions can
//! cut any link, in either direction, or a replica off from its workers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;

use super::proxy::{LinkMode, LinkProxy};
use crate::harness::{reserve_ports, ReplicaAddresses};

pub struct ProxiedNetwork {
    /// (from, to) → the proxy `from` dials `to`'s peer service through.
    links: BTreeMap<(u64, u64), LinkProxy>,
    /// Replica → the proxy in front of its API.
    apis: BTreeMap<u64, LinkProxy>,
    /// The replicas' own ports, held until they start so no proxy is given one.
    reserved: std::sync::Mutex<Vec<std::net::TcpListener>>,
}

impl ProxiedNetwork {
    /// Proxies for replicas `1..=replicas` on fresh loopback ports, and the addresses each
    /// replica listens on, advertises and dials.
    pub async fn start(replicas: u64) -> anyhow::Result<(ProxiedNetwork, Vec<ReplicaAddresses>)> {
        let (ports, reserved) = reserve_ports(2 * replicas as usize)?;
        let ids: Vec<u64> = (1..=replicas).collect();
        let listen = |id: u64, offset: usize| -> anyhow::Result<SocketAddr> {
            let port = ports[2 * (id as usize - 1) + offset];
            Ok(format!("127.0.0.1:{port}").parse()?)
        };
        let mut network = ProxiedNetwork {
            links: BTreeMap::new(),
            apis: BTreeMap::new(),
            reserved: std::sync::Mutex::new(reserved),
        };
        for &to in &ids {
            network.apis.insert(
                to,
                LinkProxy::start(listen(to, 0)?)
                    .await
                    .context("API proxy")?,
            );
            for &from in ids.iter().filter(|from| **from != to) {
                let proxy = LinkProxy::start(listen(to, 1)?)
                    .await
                    .context("peer link proxy")?;
                network.links.insert((from, to), proxy);
            }
        }
        let mut layout = Vec::new();
        for &id in &ids {
            let routes = ids
                .iter()
                .filter(|to| **to != id)
                .map(|to| (*to, network.links[&(id, *to)].addr().to_string()))
                .collect();
            layout.push(ReplicaAddresses {
                id,
                api: network.apis[&id].addr().to_string(),
                peer: listen(id, 1)?.to_string(),
                api_listen: listen(id, 0)?.to_string(),
                peer_listen: listen(id, 1)?.to_string(),
                routes,
            });
        }
        Ok((network, layout))
    }

    /// Frees the replicas' ports: call it right before starting them.
    pub fn release_ports(&self) {
        self.reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Cuts `from`'s traffic to `to` (its requests and their answers); `to` may still reach
    /// `from` over the other link.
    pub fn cut(&self, from: u64, to: u64, mode: LinkMode) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.set(mode);
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64, mode: LinkMode) {
        for ((from, to), link) in &self.links {
            if *from == id || *to == id {
                link.set(mode);
            }
        }
    }

    /// Cuts `id`'s API off from every worker and client.
    pub fn cut_api(&self, id: u64, mode: LinkMode) {
        if let Some(api) = self.apis.get(&id) {
            api.set(mode);
        }
    }

    /// Every link passes traffic again.
    pub fn heal(&self) {
        for link in self.links.values().chain(self.apis.values()) {
            link.set(LinkMode::Pass);
        }
    }
}
