//! A fault-injecting TCP proxy for one network link (loopback only): it forwards to one target
//! and can be switched, at any moment, between passing traffic, refusing it (open connections
//! are reset, new ones closed at once: a crashed host or a firewall REJECT) and black-holing it
//! (connections stay open but no byte moves either way: a cut cable or a firewall DROP, found
//! only by timeouts). Bytes held back by a black hole flow again once the link heals, as TCP
//! retransmission would deliver them.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

/// What the link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Pass,
    /// Reset open connections, close new ones.
    Refuse,
    /// Hold every byte until the mode changes.
    Blackhole,
}

/// One proxied link. Dropping it stops the proxy and closes its connections.
pub struct LinkProxy {
    addr: SocketAddr,
    mode: Arc<watch::Sender<LinkMode>>,
    accept: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a fresh loopback port and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(LinkMode::Pass);
        let mode = Arc::new(mode);
        let accept = tokio::spawn(accept_loop(listener, target, mode.clone()));
        Ok(LinkProxy { addr, mode, accept })
    }

    /// Where to dial to go through this link.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Connection tasks watch the mode: Refuse makes every one of them close.
        self.mode.send_replace(LinkMode::Refuse);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: Arc<watch::Sender<LinkMode>>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of descriptors, say: wait instead of spinning.
                debug!(%error, "proxy accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if *mode.borrow() == LinkMode::Refuse {
            reset(client);
            continue;
        }
        let mode = mode.subscribe();
        tokio::spawn(async move {
            if let Err(error) = forward(client, target, mode).await {
                debug!(%target, %error, "proxied connection ended");
            }
        });
    }
}

/// Closes with RST instead of FIN, as a refusing host does.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<LinkMode>,
) -> std::io::Result<()> {
    // A black-holed link answers no connect either: wait for it to heal or to refuse.
    while *mode.borrow_and_update() == LinkMode::Blackhole {
        if mode.changed().await.is_err() {
            return Ok(());
        }
    }
    if *mode.borrow() == LinkMode::Refuse {
        reset(client);
        return Ok(());
    }
    let server = match TcpStream::connect(target).await {
        Ok(server) => server,
        Err(error) => {
            reset(client);
            return Err(error);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut to_server = [0u8; 16 * 1024];
    let mut to_client = [0u8; 16 * 1024];
    loop {
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == LinkMode::Refuse {
                    break;
                }
            }
            read = client_read.read(&mut to_server), if *mode.borrow() == LinkMode::Pass => {
                let n = read?;
                if n == 0 {
                    let _ = server_write.shutdown().await;
                    break;
                }
                if !deliver(&mut mode, &mut server_write, &to_server[..n]).await? {
                    break;
                }
            }
            read = server_read.read(&mut to_client), if *mode.borrow() == LinkMode::Pass => {
                let n = read?;
                if n == 0 {
                    let _ = client_write.shutdown().await;
                    break;
                }
                if !deliver(&mut mode, &mut client_write, &to_client[..n]).await? {
                    break;
                }
            }
        }
    }
    // Reset both sides: the peers see the link fail, not a clean close.
    if let (Ok(client), Ok(server)) = (
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ) {
        reset(client);
        reset(server);
    }
    Ok(())
}

/// Writes `bytes` once the link passes traffic; false when it refuses instead.
async fn deliver(
    mode: &mut watch::Receiver<LinkMode>,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    bytes: &[u8],
) -> std::io::Result<bool> {
    loop {
        match *mode.borrow_and_update() {
            LinkMode::Pass => break,
            LinkMode::Refuse => return Ok(false),
            LinkMode::Blackhole => {}
        }
        if mode.changed().await.is_err() {
            return Ok(false);
        }
    }
    to.write_all(bytes).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server on a fresh port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut buf = vec![0u8; text.len()];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn passes_then_refuses_then_passes_again() {
        let proxy = LinkProxy::start(echo().await).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            round_trip(&mut stream, b"hello").await.expect("echo"),
            b"hello"
        );

        proxy.set(LinkMode::Refuse);
        // The open connection is reset...
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), round_trip(&mut stream, b"x")).await;
        assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");
        // ...and a new one is closed at once.
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("connect");
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), round_trip(&mut refused, b"x")).await;
        assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");

        proxy.set(LinkMode::Pass);
        let mut healed = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(
            round_trip(&mut healed, b"again").await.expect("echo"),
            b"again"
        );
    }

    #[tokio::test]
    async fn a_black_hole_holds_bytes_until_it_heals() {
        let proxy = LinkProxy::start(echo().await).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut stream, b"one").await.expect("echo"), b"one");

        proxy.set(LinkMode::Blackhole);
        stream.write_all(b"two").await.expect("write");
        let mut buf = [0u8; 3];
        let held =
            tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf)).await;
        assert!(held.is_err(), "nothing crosses a black hole");

        proxy.set(LinkMode::Pass);
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .expect("delivered after healing")
            .expect("read");
        assert_eq!(&buf, b"two");
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = LinkProxy::start(echo().await).await.expect("proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut stream, b"hi").await.expect("echo"), b"hi");
        drop(proxy);
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), round_trip(&mut stream, b"x")).await;
        assert!(matches!(outcome, Ok(Err(_))), "{outcome:?}");
    }
}
