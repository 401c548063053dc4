//! QUIC endpoints bound to a node identity.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use shoal_core::{NodeId, PeerAddr};

use crate::tls::{self, CertifiedKey};
use crate::Identity;

/// How long a dial may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-stream flow-control window: several pieces in flight on one stream never stall.
const STREAM_WINDOW: u32 = 16 * 1024 * 1024;
/// Per-connection flow-control window, send and receive.
const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// UDP socket buffers; the kernel caps them at net.core.{r,w}mem_max.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// The largest UDP payload this endpoint accepts and MTU discovery tries. On large-MTU paths
/// (loopback, jumbo frames) bigger packets cut per-packet work several-fold. The bound: quinn
/// sends up to 10 segments per GSO batch and Linux refuses a batch over 64 KiB, so 10 segments
/// plus the UDP header must fit (a larger value loses whole batches, which quinn then takes for
/// an MTU black hole). quinn's receive buffer also grows linearly with it.
const MAX_UDP_PAYLOAD: u16 = 6_500;
const MTU_UPPER_BOUND: u16 = MAX_UDP_PAYLOAD;
/// Concurrent request streams a peer may open.
pub const MAX_STREAMS: u32 = 256;

/// Error setting up an endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// the address
        addr: SocketAddr,
        /// the cause
        source: std::io::Error,
    },
    /// The certificate could not be made.
    #[error("cannot make the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// TLS configuration failed.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Error dialing a peer. Messages say what the user can check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No answer within [`CONNECT_TIMEOUT`].
    #[error("peer {0} did not answer within {secs}s (is it running and reachable?)", secs = CONNECT_TIMEOUT.as_secs())]
    Timeout(SocketAddr),
    /// The handshake failed (wrong node id, different protocol, closed).
    #[error("cannot connect to peer {addr}: {reason}")]
    Handshake {
        /// the address
        addr: SocketAddr,
        /// what went wrong
        reason: String,
    },
    /// The local TLS setup failed.
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// A node's QUIC endpoint: listens for peers and dials them, with TLS bound to the node key.
#[derive(Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    key: Arc<CertifiedKey>,
    node_id: NodeId,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    // Probe past the 1452-byte default: loopback and jumbo-frame links carry far larger
    // datagrams, and per-packet work (crypto setup, acks, syscalls) dominates bulk transfer.
    // Discovery backs off on paths that drop large packets.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    // Keep-alives every 5 s; a peer silent for 15 s is gone.
    t.max_idle_timeout(Some(VarInt::from_u32(15_000).into()));
    Arc::new(t)
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    // Best effort: larger buffers absorb bursts at high rates; the kernel may cap them.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

impl Endpoint {
    /// Binds a UDP socket at `addr` and serves the given ALPNs with `identity`. Must be
    /// called inside a tokio runtime.
    pub fn bind(
        identity: &Identity,
        addr: SocketAddr,
        alpns: &[&[u8]],
    ) -> Result<Self, EndpointError> {
        let key = Arc::new(tls::certify(identity)?);
        let tls = tls::server_config(&key, alpns)?;
        let quic =
            QuicServerConfig::try_from(tls).map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport());
        let bind_err = |source| EndpointError::Bind { addr, source };
        let socket = udp_socket(addr).map_err(bind_err)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let mut config = quinn::EndpointConfig::default();
        config.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("within quinn's bounds");
        let inner =
            quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind_err)?;
        Ok(Self { inner, key, node_id: identity.node_id() })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The next incoming connection attempt; `None` once the endpoint is closed.
    /// Cancel-safe.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.inner.accept().await
    }

    /// Dials `peer` with `alpn`; if the peer names a node id, any other key is refused.
    /// Returns the connection and the node id the peer proved. Cancel-safe.
    pub async fn connect(
        &self,
        peer: &PeerAddr,
        alpn: &[u8],
    ) -> Result<(Connection, NodeId), ConnectError> {
        let tls = tls::client_config(&self.key, peer.node_id, alpn)?;
        let quic =
            QuicClientConfig::try_from(tls).map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
        cfg.transport_config(transport());
        let handshake = |reason: String| ConnectError::Handshake { addr: peer.addr, reason };
        let connecting = self
            .inner
            .connect_with(cfg, peer.addr, tls::SERVER_NAME)
            .map_err(|e| handshake(e.to_string()))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Err(_) => return Err(ConnectError::Timeout(peer.addr)),
            Ok(Err(e)) => return Err(handshake(e.to_string())),
            Ok(Ok(conn)) => conn,
        };
        let id = remote_node_id(&conn)
            .ok_or_else(|| handshake("peer sent no usable certificate".into()))?;
        Ok((conn, id))
    }

    /// Accepts connections until the endpoint closes, at most `max` at once (more are refused),
    /// and runs `handle` on each with the node id its peer proved, inside a span naming the
    /// peer. Cancel-safe.
    pub async fn serve<F, Fut>(&self, max: usize, handle: F)
    where
        F: Fn(Connection, NodeId) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        let handle = Arc::new(handle);
        while let Some(incoming) = self.accept().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => return tracing::debug!(%remote, error = %e, "handshake failed"),
                };
                let Some(peer) = remote_node_id(&conn) else { return };
                let span = tracing::debug_span!("peer", peer = %peer.fmt_short(), %remote);
                tracing::Instrument::instrument(handle(conn, peer), span).await;
            });
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner.close(VarInt::from_u32(0), b"shutting down");
    }

    /// Waits until every connection has closed. Cancel-safe.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}

/// Dials `peer` with a fresh endpoint on an ephemeral port (for one-off clients).
pub async fn connect(
    identity: &Identity,
    peer: &PeerAddr,
    alpn: &[u8],
) -> Result<(Endpoint, Connection, NodeId), Box<dyn std::error::Error + Send + Sync>> {
    let bind: SocketAddr = if peer.addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let ep = Endpoint::bind(identity, bind, &[])?;
    let (conn, id) = ep.connect(peer, alpn).await?;
    Ok((ep, conn, id))
}

/// The node id a connection's peer proved in the handshake.
pub fn remote_node_id(conn: &Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    tls::node_id_of(certs.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALPN: &[u8] = b"test/1";

    /// Must be called inside a runtime (quinn binds its socket there).
    fn pair() -> (Endpoint, Endpoint, SocketAddr) {
        let a =
            Endpoint::bind(&Identity::generate(), "127.0.0.1:0".parse().unwrap(), &[ALPN]).unwrap();
        let b =
            Endpoint::bind(&Identity::generate(), "127.0.0.1:0".parse().unwrap(), &[ALPN]).unwrap();
        let addr = a.local_addr().unwrap();
        (a, b, addr)
    }

    #[tokio::test]
    async fn both_sides_learn_the_proven_node_id() {
        let (a, b, addr) = pair();
        let server = tokio::spawn({
            let a = a.clone();
            async move {
                let conn = a.accept().await.unwrap().await.unwrap();
                let (_send, mut recv) = conn.accept_bi().await.unwrap();
                let data = recv.read_to_end(100).await.unwrap();
                (remote_node_id(&conn).unwrap(), data)
            }
        });
        let peer = PeerAddr { node_id: Some(a.node_id()), addr };
        let (conn, id) = b.connect(&peer, ALPN).await.unwrap();
        assert_eq!(id, a.node_id());
        let (mut s, _recv) = conn.open_bi().await.unwrap();
        s.write_all(b"hi").await.unwrap();
        s.finish().unwrap();
        let (seen, data) = server.await.unwrap();
        assert_eq!(seen, b.node_id());
        assert_eq!(data, b"hi");
    }

    #[tokio::test]
    async fn dialing_the_wrong_node_id_is_refused() {
        let (a, b, addr) = pair();
        tokio::spawn({
            let a = a.clone();
            async move {
                while let Some(inc) = a.accept().await {
                    let _ = inc.await;
                }
            }
        });
        let other = Identity::generate().node_id();
        let err = b.connect(&PeerAddr { node_id: Some(other), addr }, ALPN).await.unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        // Without a node id, the key is learned at connect.
        let (_, id) = b.connect(&PeerAddr { node_id: None, addr }, ALPN).await.unwrap();
        assert_eq!(id, a.node_id());
    }
}
