//! Free loopback ports for local clusters, outside the kernel's ephemeral range.

use std::fs;
use std::net::TcpListener;

use anyhow::Context;

/// Picks `n` free loopback ports (see [`reserve_ports`]), holding all of them until every one
/// is chosen so none is picked twice.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    Ok(reserve_ports(n)?.0)
}

/// Like [`free_ports`], but the ports stay bound until the returned listeners are dropped, so
/// nothing this process binds in the meantime (port 0) can be given one of them.
///
/// The ports come from outside the kernel's ephemeral range when there is room: a port from
/// inside it, released for a child to bind, can meanwhile become the source port of any
/// outgoing connection on the machine (the peers' own probes), and the child then fails to
/// bind it. A port is never handed out twice by one process.
pub fn reserve_ports(n: usize) -> anyhow::Result<(Vec<u16>, Vec<TcpListener>)> {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut listeners = Vec::with_capacity(n);
    let window = ports_outside_ephemeral_range();
    let mut rng = rand::thread_rng();
    let mut attempts = 0;
    while listeners.len() < n {
        attempts += 1;
        let port = match &window {
            Some(window) if attempts <= 20 * n + 1000 => rng.gen_range(window.clone()),
            _ => 0,
        };
        if port != 0 && handed_out.contains(&port) {
            continue;
        }
        let listener = match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => listener,
            Err(_) if port != 0 => continue,
            Err(e) => return Err(e).context("cannot bind a loopback port"),
        };
        let bound = listener.local_addr()?.port();
        if handed_out.insert(bound) {
            listeners.push(listener);
        }
    }
    let ports = listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<anyhow::Result<_>>()?;
    Ok((ports, listeners))
}

/// A range of ports the kernel does not give to outgoing connections (below or above
/// `ip_local_port_range`), if one of useful size exists.
fn ports_outside_ephemeral_range() -> Option<std::ops::Range<u16>> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut bounds = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (bounds.next()?.ok()?, bounds.next()?.ok()?);
    const BELOW_FROM: u16 = 12_000;
    if low >= BELOW_FROM + 4_000 {
        Some(BELOW_FROM..low)
    } else if high <= 61_000 {
        Some(high + 1..65_535)
    } else {
        None
    }
}
