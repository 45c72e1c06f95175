//! Serving HTTPS with mTLS: the accept loop shared by the bridge's listeners and the sandbox
//! acquirer.
//!
//! No peer can hold a connection slot for long without using it:
//! - a connection permit is taken before `accept` (`connections_max` bounds open sockets), and
//!   one address (an IPv6 /64) holds at most `connections_per_ip_max` of them (more are closed at
//!   once);
//! - the TLS handshake has a deadline;
//! - HTTP/1 request heads have a deadline (hyper's, which needs the timer set here; it also runs
//!   between requests on a keep-alive connection);
//! - a connection with no request under way for `idle_timeout` is closed (this also covers a TLS
//!   connection that never sends a byte, and an HTTP/2 connection with no streams);
//! - HTTP/2 pings a quiet peer and drops it when the ping goes unanswered, and caps its streams;
//! - every connection is closed gracefully at `connection_max_age`, so certificate expiry,
//!   revocation and reloaded TLS settings reach long-lived connections;
//! - shutdown stops accepting, lets connections finish what is under way, and drops whatever is
//!   left at `shutdown_timeout`.
//!
//! The TLS configuration is read per accepted connection from a [`ServerTls`], so a reload (new
//! certificates, new CRLs) applies to the next handshake without a restart.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub remote: SocketAddr,
    /// The client's certificate chain, end entity first (verified by the handshake).
    pub peer_certs: Arc<Vec<CertificateDer<'static>>>,
    /// The negotiated key exchange group, e.g. `X25519MLKEM768`.
    pub kx_group: Option<String>,
    /// Who the certificate identifies, once a listener has resolved it (per connection, so the
    /// chain is verified once, not per request; `connection_max_age` bounds how long that holds).
    pub identity: std::sync::OnceLock<Option<String>>,
}

/// A handler's way to drop the connection without answering (the sandbox acquirer's "connection
/// reset" behaviour).
#[derive(Debug)]
pub struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset by the handler")
    }
}

impl std::error::Error for Reset {}

/// Limits of one listener. Each exists so that a peer cannot hold a connection slot it does not
/// use; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Open connections; more wait in the kernel's accept queue.
    pub connections_max: usize,
    /// Open connections from one IP address (an IPv6 /64 counts as one); more are closed as soon
    /// as they are accepted. Behind a load balancer that hides client addresses, set it to
    /// `connections_max`.
    pub connections_per_ip_max: usize,
    /// The TLS handshake must finish within this.
    pub handshake_timeout: Duration,
    /// An HTTP/1 request head must arrive within this (also the longest wait for the next request
    /// on a keep-alive connection).
    pub header_read_timeout: Duration,
    /// A connection with no request under way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection older than this is closed gracefully (it finishes what is under way).
    pub connection_max_age: Duration,
    /// HTTP/2: a quiet connection is pinged this often...
    pub http2_keep_alive_interval: Duration,
    /// ...and dropped when a ping goes unanswered this long.
    pub http2_keep_alive_timeout: Duration,
    /// HTTP/2: streams open at once on one connection.
    pub http2_streams_max: u32,
    /// How long a connection told to close (shutdown, age, idle) may take to finish its
    /// requests; also the bound on the whole drain at shutdown. Then connections are dropped.
    pub shutdown_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            connections_max: 1_024,
            connections_per_ip_max: 256,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connection_max_age: Duration::from_secs(600),
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_streams_max: 128,
            shutdown_timeout: Duration::from_secs(20),
        }
    }
}

/// The TLS configuration a listener serves with, read once per accepted connection: a reload
/// sends a new one on the channel and the next handshake uses it. An `Arc<ServerConfig>` is a
/// configuration that never changes.
#[derive(Debug, Clone)]
pub struct ServerTls(watch::Receiver<Arc<rustls::ServerConfig>>);

impl ServerTls {
    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.borrow().clone()
    }
}

impl From<Arc<rustls::ServerConfig>> for ServerTls {
    fn from(config: Arc<rustls::ServerConfig>) -> Self {
        // The receiver keeps the last value after its sender is gone.
        ServerTls(watch::channel(config).1)
    }
}

impl From<watch::Receiver<Arc<rustls::ServerConfig>>> for ServerTls {
    fn from(rx: watch::Receiver<Arc<rustls::ServerConfig>>) -> Self {
        ServerTls(rx)
    }
}

/// Open connections per remote address.
#[derive(Debug)]
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// The host an address counts as for the per-address limit: an IPv4 address (also when mapped
/// into IPv6), or an IPv6 /64, which one host or site gets whole.
fn host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// One connection's place in [`PerIp`]; given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(table: &Arc<PerIp>, ip: IpAddr) -> Option<IpSlot> {
        let mut open = table.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= table.max {
            return None;
        }
        *n += 1;
        Some(IpSlot { table: table.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Counts a connection's requests under way; the count goes down when the request's future ends
/// or is dropped.
struct Busy(Arc<watch::Sender<usize>>);

impl Busy {
    fn start(count: &Arc<watch::Sender<usize>>) -> Busy {
        count.send_modify(|n| *n += 1);
        Busy(count.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Resolves once no request has been under way for `after`.
async fn idle(busy: &mut watch::Receiver<usize>, after: Duration) {
    loop {
        let quiet = *busy.borrow_and_update() == 0;
        if quiet {
            tokio::select! {
                _ = tokio::time::sleep(after) => return,
                changed = busy.changed() => if changed.is_err() { return std::future::pending().await },
            }
        } else if busy.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The HTTP/1 + HTTP/2 server settings of one connection.
fn http_builder(limits: &ServeLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently drops its header-read timeout, and HTTP/2 cannot ping.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_concurrent_streams(limits.http2_streams_max);
    builder
}

/// Connections the kernel may queue before `accept` (capped by `net.core.somaxconn`). Deeper
/// than tokio's 1,024 so a burst waits for a slot (every slot frees itself by the limits above)
/// instead of being dropped half-open by a full queue.
pub const ACCEPT_BACKLOG: u32 = 4_096;

/// A listening socket on `addr` with [`ACCEPT_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves `listener` until `shutdown` turns true, then drains connections (for at most
/// `limits.shutdown_timeout`) and returns.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    let tls = tls.into();
    let permits = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let per_ip =
        Arc::new(PerIp { max: limits.connections_per_ip_max.max(1), open: Mutex::default() });
    let mut connections = JoinSet::new();
    loop {
        // Finished connections leave the set here, so it holds only open ones.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stopped(&mut shutdown) => break,
        };
        let (tcp, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Some(slot) = PerIp::take(&per_ip, host(remote.ip())) else {
            tracing::debug!(%remote, "closing a connection past the per-address limit");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            remote,
            tls.current(),
            limits,
            shutdown.clone(),
            handler.clone(),
            (permit, slot),
        ));
    }
    drop(listener);
    // Every connection saw `shutdown` and is finishing its requests; wait for them, but not past
    // the deadline.
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "shutdown deadline passed: dropping the connections left"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// One connection, from handshake to close. `_held` is its connection permit and its place in
/// the per-address count, given back when it ends.
async fn connection<H, F>(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
    _held: (OwnedSemaphorePermit, IpSlot),
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    let handshake =
        tokio::time::timeout(limits.handshake_timeout, TlsAcceptor::from(tls).accept(tcp));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                return;
            }
        },
        _ = stopped(&mut shutdown) => return,
    };
    let (_, session) = tls.get_ref();
    let conn = Arc::new(Conn {
        remote,
        peer_certs: Arc::new(
            session
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        ),
        kx_group: session.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name())),
        identity: std::sync::OnceLock::new(),
    });
    let (count, mut busy) = watch::channel(0usize);
    let count = Arc::new(count);
    let service = hyper::service::service_fn(move |req| {
        let busy = Busy::start(&count);
        let answer = handler(req, conn.clone());
        async move {
            let answer = answer.await;
            drop(busy);
            answer
        }
    });
    let builder = http_builder(&limits);
    let served = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    let age = tokio::time::sleep(limits.connection_max_age);
    tokio::pin!(age);
    let why = tokio::select! {
        ended = served.as_mut() => {
            if let Err(e) = ended {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = &mut age => "it reached its maximum age",
        _ = idle(&mut busy, limits.idle_timeout) => "it is idle",
        _ = stopped(&mut shutdown) => "the listener is shutting down",
    };
    tracing::debug!(%remote, "closing the connection: {why}");
    served.as_mut().graceful_shutdown();
    match tokio::time::timeout(limits.shutdown_timeout, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "connection ended with an error"),
        Err(_) => tracing::debug!(%remote, "connection did not finish in time; dropped"),
    }
}

/// The pooled HTTPS client the bridge calls out with (acquirers, partners' webhook endpoints):
/// `tls` carries the bridge's client certificate and the peer's CA; `connect_timeout` bounds TCP.
pub fn client(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(https)
}

/// See [`client`].
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Resolves once `shutdown` says true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_slash_64_is_one_host_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(host(a), host(b));
        assert_ne!(host(a), host(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(host(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn per_address_slots_are_given_back() {
        let table = Arc::new(PerIp { max: 2, open: Mutex::default() });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let one = PerIp::take(&table, ip).expect("first");
        let _two = PerIp::take(&table, ip).expect("second");
        assert!(PerIp::take(&table, ip).is_none());
        drop(one);
        assert!(PerIp::take(&table, ip).is_some());
    }
}
