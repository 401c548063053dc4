//! QUIC endpoints bound to a node identity.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use shoal_core::{NodeId, PeerAddr};

use crate::admission::Admission;
use crate::tls::{self, CertifiedKey};
use crate::{Identity, Limits};

/// How long a dial may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer's handshake may take before its connection place is given back.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes quinn buffers for one connection attempt not yet accepted (early handshake packets).
const INCOMING_BUFFER: u64 = 64 * 1024;
/// Bytes quinn buffers for all connection attempts not yet accepted.
const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;
/// Close code for a connection over the per-node-id cap.
pub const CLOSE_OVER_CAP: u32 = 3;
/// UDP socket buffers; the kernel caps them at net.core.{r,w}mem_max.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// The largest UDP payload this endpoint accepts and MTU discovery tries. On large-MTU paths
/// (loopback, jumbo frames) bigger packets cut per-packet work several-fold. The bound: quinn
/// sends up to 10 segments per GSO batch and Linux refuses a batch over 64 KiB, so 10 segments
/// plus the UDP header must fit (a larger value loses whole batches, which quinn then takes for
/// an MTU black hole). quinn's receive buffer also grows linearly with it.
const MAX_UDP_PAYLOAD: u16 = 6_500;
const MTU_UPPER_BOUND: u16 = MAX_UDP_PAYLOAD;

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
    limits: Limits,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// Transport settings for the connections this endpoint serves.
fn server_transport(l: &Limits) -> Arc<TransportConfig> {
    let mut t = transport();
    t.stream_receive_window(VarInt::from_u32(l.stream_window));
    t.receive_window(VarInt::from_u32(l.connection_window));
    t.send_window(l.send_window);
    t.max_concurrent_bidi_streams(VarInt::from_u32(l.max_streams));
    Arc::new(t)
}

/// Transport settings for the connections this endpoint dials. The dialer opens every stream,
/// so the peer may open none.
fn client_transport(l: &Limits) -> Arc<TransportConfig> {
    let mut t = transport();
    t.stream_receive_window(VarInt::from_u32(l.dial_stream_window));
    t.receive_window(VarInt::from_u32(l.dial_connection_window));
    t.send_window(u64::from(l.dial_connection_window));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    Arc::new(t)
}

fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
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
    // Send streams one after another (in the order written), not round-robin: a peer asks for
    // up to 32 pieces at once, and interleaving them made every piece complete only at the end
    // of the whole batch, with more, smaller stream frames for both sides to build and reassemble.
    // In order, each piece completes (and is hashed and written, and announced) as early as it
    // can. Measured on a loopback pair: about 5% less CPU per GiB on each side.
    t.send_fairness(false);
    t
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
    /// Binds a UDP socket at `addr` and serves the given ALPNs with `identity`, with the
    /// windows and caps of an ordinary node ([`Limits::node`]). Must be called inside a tokio
    /// runtime.
    pub fn bind(
        identity: &Identity,
        addr: SocketAddr,
        alpns: &[&[u8]],
    ) -> Result<Self, EndpointError> {
        Self::bind_with(identity, addr, alpns, Limits::node())
    }

    /// [`Endpoint::bind`] with the windows and caps of another role. Must be called inside a
    /// tokio runtime.
    pub fn bind_with(
        identity: &Identity,
        addr: SocketAddr,
        alpns: &[&[u8]],
        limits: Limits,
    ) -> Result<Self, EndpointError> {
        let key = Arc::new(tls::certify(identity)?);
        let tls = tls::server_config(&key, alpns)?;
        let quic =
            QuicServerConfig::try_from(tls).map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(server_transport(&limits));
        // Connection attempts quinn holds before `serve` sees them, and the packets it buffers
        // for each: by default 65,536 attempts and 100 MiB, far more than any role needs.
        server
            .max_incoming(limits.max_connections.max(64))
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let bind_err = |source| EndpointError::Bind { addr, source };
        let socket = udp_socket(addr).map_err(bind_err)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let mut config = quinn::EndpointConfig::default();
        config.max_udp_payload_size(MAX_UDP_PAYLOAD).expect("within quinn's bounds");
        let inner =
            quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind_err)?;
        Ok(Self { inner, key, node_id: identity.node_id(), limits })
    }

    /// The windows and caps this endpoint was bound with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Connections open on this endpoint, both ways (a counter quinn keeps: no scan).
    pub fn open_connections(&self) -> usize {
        self.inner.open_connections()
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
        cfg.transport_config(client_transport(&self.limits));
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

    /// Accepts connections until the endpoint closes and runs `handle` on each with the node
    /// id its peer proved, inside a span naming the peer. At most `max` connections (and never
    /// more than [`Limits::max_connections`]) are served at once, at most
    /// [`Limits::per_ip`] from one source address (refused before the handshake, which costs
    /// one packet) and at most [`Limits::per_peer`] from one node id (closed with
    /// [`CLOSE_OVER_CAP`] right after the handshake, the first moment the id is known); a
    /// handshake that takes longer than [`HANDSHAKE_TIMEOUT`] is dropped. Cancel-safe.
    pub async fn serve<F, Fut>(&self, max: usize, handle: F)
    where
        F: Fn(Connection, NodeId) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let admission = Admission::new(self.limits, max);
        let handle = Arc::new(handle);
        while let Some(incoming) = self.accept().await {
            // A source address is counted only once the peer proved it receives packets there
            // (a QUIC retry: one round trip). Otherwise spoofed Initial packets could take the
            // places of a victim's address, or of the whole node, for a handshake timeout each.
            if !incoming.remote_address_validated() && incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    tracing::debug!(error = %e, "cannot send a retry");
                }
                continue;
            }
            let remote = incoming.remote_address();
            let addr_place = match admission.admit_addr(remote.ip()) {
                Ok(g) => g,
                Err(why) => {
                    tracing::debug!(%remote, %why, "connection refused");
                    incoming.refuse();
                    continue;
                }
            };
            let (handle, admission) = (handle.clone(), admission.clone());
            tokio::spawn(async move {
                let _addr_place = addr_place;
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return tracing::debug!(%remote, error = %e, "handshake failed"),
                    Err(_) => return tracing::debug!(%remote, "handshake timed out"),
                };
                let Some(peer) = remote_node_id(&conn) else { return };
                let _peer_place = match admission.admit_peer(peer) {
                    Ok(g) => g,
                    Err(why) => {
                        tracing::debug!(%remote, %peer, %why, "connection refused");
                        let reason = why.to_string();
                        return conn.close(VarInt::from_u32(CLOSE_OVER_CAP), reason.as_bytes());
                    }
                };
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

    #[tokio::test]
    async fn a_peer_cannot_open_more_streams_than_the_role_allows() {
        let limits = Limits { max_streams: 2, ..Limits::node() };
        let a = Endpoint::bind_with(
            &Identity::generate(),
            "127.0.0.1:0".parse().unwrap(),
            &[ALPN],
            limits,
        )
        .unwrap();
        let b =
            Endpoint::bind(&Identity::generate(), "127.0.0.1:0".parse().unwrap(), &[ALPN]).unwrap();
        let addr = a.local_addr().unwrap();
        let server = tokio::spawn({
            let a = a.clone();
            async move { a.accept().await.unwrap().await.unwrap() }
        });
        let (conn, _) = b.connect(&PeerAddr { node_id: None, addr }, ALPN).await.unwrap();
        let server_conn = server.await.unwrap();
        // The limit is a transport parameter, known to the dialer once connected: two streams
        // open at once, a third waits until one closes (nothing here ever closes one).
        let _s1 = conn.open_bi().await.unwrap();
        let _s2 = conn.open_bi().await.unwrap();
        let third_opened = tokio::select! {
            biased;
            _ = conn.open_bi() => true,
            () = std::future::ready(()) => false,
        };
        assert!(!third_opened, "a third concurrent stream was allowed");
        // The dialer opens every stream: the peer it dialed may open none.
        let reverse_opened = tokio::select! {
            biased;
            _ = server_conn.open_bi() => true,
            () = std::future::ready(()) => false,
        };
        assert!(!reverse_opened, "the dialed peer opened a stream");
    }
}
