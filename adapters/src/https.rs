//! Serving HTTPS with mTLS: the accept loop shared by the bridge's listeners and the sandbox
//! acquirer.
//!
//! No peer can hold a connection slot for long without using it:
//! - connections in their TLS handshake and established connections have separate pools. A
//!   connection is accepted at once into the handshake pool (`handshakes_max`); it moves to the
//!   established pool (`connections_max`, of which one address, an IPv6 /64, holds at most
//!   `connections_per_ip_max`) only when its handshake is done, which on the bridge's listeners
//!   means a client certificate verified against a configured CA. So a flood of sockets that
//!   never finish a handshake competes only for handshake places, never for partners'
//!   established slots;
//! - when the handshake pool is full, a new connection does not wait (it would wait in the
//!   kernel's accept queue behind the flood): it takes the place of one already there, or is
//!   closed at once. See [`Handshakes`] for whom: first sockets that have sent nothing (a stalled
//!   socket never sends its ClientHello; a client sends it at once), then handshakes of an
//!   address holding more places than the newcomer's, then a handshake that has had a quarter of
//!   `handshake_timeout` to finish. A flood of sockets that never send a byte therefore cannot
//!   keep a partner out, from any number of addresses, behind a load balancer or not;
//! - handshake and admission have a deadline (`handshake_timeout`, from accept to an
//!   established slot; a connection whose handshake is done waits for a slot only until then);
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
//! What this leaves open: peers that send a ClientHello and then stall (each costs us a server
//! handshake flight). While one of their addresses holds two places or more, a partner's newcomer
//! takes one of those. So to keep partners out they must come from at least `handshakes_max`
//! addresses (IPv6 /64s are cheap), or from behind a load balancer that hides client addresses
//! (everyone is one address there), and open `handshakes_max` new connections every quarter of
//! `handshake_timeout` (about 205 a second by default) for as long as they do it. A partner's
//! connection in the instant between accept and its ClientHello counts as silent and is among the
//! first to go under such a flood (it retries). Against that: a shorter `handshake_timeout`, and
//! a cap on new connections per source at the load balancer or firewall.
//!
//! The TLS configuration is read per connection, when its ClientHello has come, from a
//! [`ServerTls`], so a reload (new certificates, new CRLs) applies to the next handshake without a
//! restart.
//!
//! Each listener is named ([`serve_named`]) and counts, through the `metrics` facade, how its
//! connections got in (`qrbridge_tls_handshakes_total{listener,outcome}`) and how many are open
//! (`qrbridge_connections_open{listener}`); see docs/metrics.md and [`Meter`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

/// What a handler knows about the connection a request came on.
#[derive(Debug)]
pub struct Conn {
    pub remote: SocketAddr,
    /// The client's certificate chain, end entity first (verified by the handshake).
    pub peer_certs: Arc<Vec<CertificateDer<'static>>>,
    /// The negotiated key exchange group, e.g. `X25519MLKEM768`.
    pub kx_group: Option<String>,
    /// Who the certificate identifies, once a listener has resolved it, with the generation of
    /// the directory that resolved it (per connection, so the chain is verified once, not per
    /// request; a reload makes a new directory, and the next request resolves it again).
    pub identity: std::sync::Mutex<Option<(u64, Option<String>)>>,
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
    /// Established connections (handshake done). A connection whose handshake is done waits for
    /// one until its `handshake_timeout` runs out, then is closed.
    pub connections_max: usize,
    /// Established connections from one IP address (an IPv6 /64 counts as one); more are closed
    /// as soon as their handshake is done. Behind a load balancer that hides client addresses,
    /// set it to `connections_max`.
    pub connections_per_ip_max: usize,
    /// Connections in their TLS handshake (or done with it and waiting for an established slot).
    /// When all places are taken, a new connection takes one from another; see [`Handshakes`].
    pub handshakes_max: usize,
    /// From accept, the TLS handshake must be done and the connection established within this.
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
    /// After the server closes a connection, how long it goes on reading (and dropping) what the
    /// client still sends — a request body it answered early without reading — so that closing
    /// does not reset the connection and take the answer with it ("lingering close").
    pub linger: Duration,
    /// The most it reads while lingering.
    pub linger_bytes_max: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            connections_max: 1_024,
            connections_per_ip_max: 256,
            handshakes_max: 256,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            connection_max_age: Duration::from_secs(600),
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(10),
            http2_streams_max: 128,
            shutdown_timeout: Duration::from_secs(20),
            linger: Duration::from_secs(2),
            linger_bytes_max: 16 << 20,
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

/// Connections in their TLS handshake (at most `max`), and whom to close when a new one comes and
/// every place is taken. A newcomer is never kept waiting: it takes the place of the first of
/// these, or is closed at once when there is none.
/// 1. A connection that has sent nothing yet (a client sends its ClientHello at once; a stalled
///    socket never does): from the address holding the most such places, where the newcomer
///    counts with its own address, which gives way first on a tie; that address's oldest.
/// 2. Else, one that has sent its ClientHello, of an address holding more places than the
///    newcomer's would (counting the newcomer): its oldest, however young. One address (or a
///    few) flooding pushes out only its own handshakes, never those of an address holding fewer.
/// 3. Else the oldest handshake of all, if it has had `protected` (a quarter of the handshake
///    deadline) to finish. A real handshake needs a round trip or two, so a burst of real
///    connections larger than the pool does not push out its own handshakes before they can
///    finish (every newcomer would then take the place of one about to finish, and none would);
///    the connections past the pool are closed at once, and their clients retry.
///
/// Behind a load balancer that hides client addresses, every connection has one address and step
/// 2 never applies; see the module docs for what that leaves open.
#[derive(Debug)]
struct Handshakes {
    max: usize,
    protected: Duration,
    table: Mutex<HandshakeTable>,
}

#[derive(Debug, Default)]
struct HandshakeTable {
    /// Ids grow with time, so the smallest is the oldest.
    next: u64,
    /// Connections that have sent nothing yet.
    silent: Group,
    /// Connections whose ClientHello has come (in the handshake, or done with it and waiting for
    /// an established slot).
    talking: Group,
}

/// One connection in a [`Group`].
#[derive(Debug)]
struct Place {
    since: tokio::time::Instant,
    /// Closes the connection (it takes the place's loss as its end).
    close: oneshot::Sender<()>,
}

/// Connections by address and by age, and the addresses by how many places each holds.
#[derive(Debug, Default)]
struct Group {
    /// Each address's connections by id (age).
    hosts: HashMap<IpAddr, BTreeMap<u64, Place>>,
    /// Every connection's address by id: the first is the oldest.
    by_age: BTreeMap<u64, IpAddr>,
    /// `(places held, Reverse(oldest id), address)` for every address in `hosts`: the last is the
    /// address holding the most, the one with the oldest connection among equals.
    rank: BTreeSet<(usize, Reverse<u64>, IpAddr)>,
}

impl Group {
    fn len(&self) -> usize {
        self.by_age.len()
    }

    fn held(&self, ip: IpAddr) -> usize {
        self.hosts.get(&ip).map_or(0, BTreeMap::len)
    }

    fn rank_of(&self, ip: IpAddr) -> Option<(usize, Reverse<u64>, IpAddr)> {
        let conns = self.hosts.get(&ip)?;
        let (&oldest, _) = conns.first_key_value()?;
        Some((conns.len(), Reverse(oldest), ip))
    }

    fn insert(&mut self, ip: IpAddr, id: u64, place: Place) {
        if let Some(rank) = self.rank_of(ip) {
            self.rank.remove(&rank);
        }
        self.hosts.entry(ip).or_default().insert(id, place);
        self.by_age.insert(id, ip);
        self.rank.extend(self.rank_of(ip));
    }

    fn remove(&mut self, ip: IpAddr, id: u64) -> Option<Place> {
        let rank = self.rank_of(ip)?;
        let conns = self.hosts.get_mut(&ip)?;
        let place = conns.remove(&id)?;
        self.by_age.remove(&id);
        self.rank.remove(&rank);
        if conns.is_empty() {
            self.hosts.remove(&ip);
        } else {
            self.rank.extend(self.rank_of(ip));
        }
        Some(place)
    }

    /// The address holding the most places other than `ip`, and how many.
    fn heaviest_other(&self, ip: IpAddr) -> Option<(IpAddr, usize)> {
        self.rank.iter().rev().find(|(_, _, host)| *host != ip).map(|&(held, _, host)| (host, held))
    }

    fn oldest_of(&self, host: IpAddr) -> Option<(IpAddr, u64)> {
        let (&id, _) = self.hosts.get(&host)?.first_key_value()?;
        Some((host, id))
    }

    /// Step 1 of [`Handshakes`]: the heaviest address (the newcomer's own on a tie), its oldest.
    fn heaviest_oldest(&self, ip: IpAddr) -> Option<(IpAddr, u64)> {
        let own = self.held(ip);
        match self.heaviest_other(ip) {
            Some((host, held)) if own == 0 || held > own + 1 => self.oldest_of(host),
            _ => self.oldest_of(ip),
        }
    }

    /// Steps 2 and 3 of [`Handshakes`].
    fn over_share_or_old(&self, ip: IpAddr, old: tokio::time::Instant) -> Option<(IpAddr, u64)> {
        if let Some((host, held)) = self.heaviest_other(ip) {
            if held > self.held(ip) + 1 {
                return self.oldest_of(host);
            }
        }
        let (&id, &host) = self.by_age.first_key_value()?;
        let since = self.hosts.get(&host)?.get(&id)?.since;
        (since <= old).then_some((host, id))
    }
}

/// A connection's place in [`Handshakes`]; given back on drop.
struct HandshakeSlot {
    pool: Arc<Handshakes>,
    ip: IpAddr,
    id: u64,
}

impl Handshakes {
    fn new(max: usize, handshake_timeout: Duration) -> Arc<Self> {
        Arc::new(Handshakes {
            max: max.max(1),
            protected: handshake_timeout / 4,
            table: Mutex::default(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HandshakeTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection accepted from `ip` at `now`, taken from another connection when
    /// all are taken; `None` when none can be (the newcomer is to be closed). The receiver
    /// resolves when this connection is later the one chosen to close.
    fn enter(
        pool: &Arc<Handshakes>,
        ip: IpAddr,
        now: tokio::time::Instant,
    ) -> Option<(HandshakeSlot, oneshot::Receiver<()>)> {
        let mut table = pool.table();
        let table = &mut *table;
        if table.silent.len() + table.talking.len() >= pool.max {
            let old = now.checked_sub(pool.protected).unwrap_or(now);
            let place = match table.silent.heaviest_oldest(ip) {
                Some((host, id)) => table.silent.remove(host, id),
                None => match table.talking.over_share_or_old(ip, old) {
                    Some((host, id)) => table.talking.remove(host, id),
                    None => return None,
                },
            };
            if let Some(place) = place {
                tracing::debug!("handshake places all taken: closing one for a newcomer");
                let _ = place.close.send(());
            }
        }
        let id = table.next;
        table.next += 1;
        let (close, closed) = oneshot::channel();
        table.silent.insert(ip, id, Place { since: now, close });
        Some((HandshakeSlot { pool: pool.clone(), ip, id }, closed))
    }
}

impl HandshakeSlot {
    /// The connection's ClientHello has come: it is no longer among the silent. False when its
    /// place was given to a newer connection first (then it must not answer the hello).
    fn hello(&self) -> bool {
        let mut table = self.pool.table();
        match table.silent.remove(self.ip, self.id) {
            Some(place) => {
                table.talking.insert(self.ip, self.id, place);
                true
            }
            None => false,
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut table = self.pool.table();
        if table.silent.remove(self.ip, self.id).is_none() {
            table.talking.remove(self.ip, self.id);
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
/// than tokio's 1,024 so a burst the accept loop has not reached yet is not dropped half-open by
/// a full queue.
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

/// [`serve_named`] with the listener named [`UNNAMED`] in its metrics.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    limits: ServeLimits,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    serve_named(UNNAMED, listener, tls, limits, shutdown, handler).await
}

/// The `listener` label of a listener served by [`serve`], which gives no name.
pub const UNNAMED: &str = "unnamed";

/// Serves `listener` until `shutdown` turns true, then drains connections (for at most
/// `limits.shutdown_timeout`) and returns. `name` is the listener's `listener` label in the
/// metrics ([`Meter`]): a few fixed words (`partner`, `admin`, `acquirer`), never anything a peer
/// chose. Its series exist (at zero) once this is called, before the future is first polled.
pub fn serve_named<H, F>(
    name: &'static str,
    listener: TcpListener,
    tls: impl Into<ServerTls>,
    limits: ServeLimits,
    shutdown: watch::Receiver<bool>,
    handler: H,
) -> impl Future<Output = ()> + Send
where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    accept_loop(Meter::new(name), listener, tls.into(), limits, shutdown, handler)
}

/// [`serve_named`]'s work.
async fn accept_loop<H, F>(
    meter: Meter,
    listener: TcpListener,
    tls: ServerTls,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    let handshakes = Handshakes::new(limits.handshakes_max, limits.handshake_timeout);
    let established = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let per_ip =
        Arc::new(PerIp { max: limits.connections_per_ip_max.max(1), open: Mutex::default() });
    let mut connections = JoinSet::new();
    loop {
        // Finished connections leave the set here, so it holds only open ones.
        while connections.try_join_next().is_some() {}
        // No permit before `accept`: a new connection gets a handshake place at once or is
        // closed at once (see `Handshakes`), so the accept queue never holds a partner behind a
        // flood, and open sockets stay within `handshakes_max + connections_max`.
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
        // Counted open from here; the count goes down when `open` is dropped, however the
        // connection ends (closed at once below, its task done, or aborted at shutdown).
        let open = meter.opened();
        let now = tokio::time::Instant::now();
        let Some((handshake, evicted)) = Handshakes::enter(&handshakes, host(remote.ip()), now)
        else {
            meter.refused.increment(1);
            tracing::debug!(%remote, "closing a connection: every handshake place is in use");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            remote,
            tls.clone(),
            limits,
            shutdown.clone(),
            handler.clone(),
            Admission {
                accepted: now,
                handshake,
                evicted,
                established: established.clone(),
                per_ip: per_ip.clone(),
                meter: meter.clone(),
                open,
            },
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

/// What a connection needs to get in: its handshake place (and the signal that it lost it), and
/// the pools it moves to once its handshake is done.
struct Admission {
    accepted: tokio::time::Instant,
    handshake: HandshakeSlot,
    evicted: oneshot::Receiver<()>,
    established: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    /// Where its way in is counted.
    meter: Meter,
    /// Its place in the open connections' gauge, held until the connection ends.
    open: Open,
}

/// Why a connection was not established.
#[derive(Debug, thiserror::Error)]
enum NotAdmitted {
    #[error("TLS handshake refused: {0}")]
    Tls(std::io::Error),
    #[error("past the per-address limit of established connections")]
    PerAddress,
    #[error("no established slot came free in time")]
    NoSlot,
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("its handshake place went to a newer connection")]
    Evicted,
}

const TLS_HANDSHAKES_TOTAL: &str = "qrbridge_tls_handshakes_total";
const CONNECTIONS_OPEN: &str = "qrbridge_connections_open";

/// One listener's metrics (the handles are taken once, at the start of [`serve_named`]):
/// `qrbridge_tls_handshakes_total{listener,outcome}`, how each accepted connection's way in
/// ended, and `qrbridge_connections_open{listener}`, the TCP connections accepted and not closed
/// yet (in their handshake, established, or lingering).
///
/// The outcomes: `ok` (handshake done, established); `failed` (the handshake failed: a refused
/// or missing client certificate, a peer that is not speaking TLS, or one that closed first, as a
/// TCP health check does); `timeout` (not done within `handshake_timeout`); `refused` (closed for
/// lack of room: every handshake place taken, its place given to a newer connection, past the
/// per-address limit, or no established slot free in time). A connection still in its handshake
/// when the listener shuts down is not counted.
#[derive(Clone)]
struct Meter {
    ok: metrics::Counter,
    failed: metrics::Counter,
    timeout: metrics::Counter,
    refused: metrics::Counter,
    open: metrics::Gauge,
}

impl Meter {
    /// The handles of `listener`'s series; all four outcomes exist (at 0) from the start, so a
    /// rate over them is defined before the first failure.
    fn new(listener: &'static str) -> Meter {
        metrics::describe_counter!(
            TLS_HANDSHAKES_TOTAL,
            "Connections accepted on a TLS listener, by how their way in ended"
        );
        metrics::describe_gauge!(CONNECTIONS_OPEN, "TCP connections open on a TLS listener");
        let outcome = |outcome: &'static str| metrics::counter!(TLS_HANDSHAKES_TOTAL, "listener" => listener, "outcome" => outcome);
        Meter {
            ok: outcome("ok"),
            failed: outcome("failed"),
            timeout: outcome("timeout"),
            refused: outcome("refused"),
            open: metrics::gauge!(CONNECTIONS_OPEN, "listener" => listener),
        }
    }

    /// Counts a connection open until the [`Open`] is dropped.
    fn opened(&self) -> Open {
        self.open.increment(1);
        Open(self.open.clone())
    }

    /// Counts a connection that was not established.
    fn not_admitted(&self, why: &NotAdmitted) {
        match why {
            NotAdmitted::Tls(_) => self.failed.increment(1),
            NotAdmitted::HandshakeTimeout => self.timeout.increment(1),
            NotAdmitted::PerAddress | NotAdmitted::NoSlot | NotAdmitted::Evicted => {
                self.refused.increment(1)
            }
        }
    }
}

/// A connection counted in `qrbridge_connections_open`; counted out when dropped.
struct Open(metrics::Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1);
    }
}

/// Takes a connection from accept through its TLS handshake into an established slot, all by
/// `deadline`; holds its handshake place meanwhile.
async fn admit(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: &ServerTls,
    handshake: &HandshakeSlot,
    established: &Arc<Semaphore>,
    per_ip: &Arc<PerIp>,
    deadline: tokio::time::Instant,
) -> Result<(TlsStream<TcpStream>, OwnedSemaphorePermit, IpSlot), NotAdmitted> {
    let handshaken = async {
        // The configuration is read when the ClientHello has come, so a reload applies to every
        // handshake that starts after it.
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(NotAdmitted::Tls)?;
        // Its place may have gone to a newer connection while the hello was read: then it is
        // closed before any answer, so the client never takes the handshake for done.
        if !handshake.hello() {
            return Err(NotAdmitted::Evicted);
        }
        start.into_stream(tls.current()).await.map_err(NotAdmitted::Tls)
    };
    let stream = tokio::time::timeout_at(deadline, handshaken)
        .await
        .map_err(|_| NotAdmitted::HandshakeTimeout)??;
    let slot = PerIp::take(per_ip, host(remote.ip())).ok_or(NotAdmitted::PerAddress)?;
    let permit = tokio::time::timeout_at(deadline, established.clone().acquire_owned())
        .await
        .map_err(|_| NotAdmitted::NoSlot)?
        .map_err(|_| NotAdmitted::NoSlot)?;
    Ok((stream, permit, slot))
}

/// One connection, from handshake to close. Its handshake place is given back once it is
/// established; its established slot and its place in the per-address count when it ends.
async fn connection<H, F>(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: ServerTls,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
    admission: Admission,
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    // `_open` is held to the end of the connection: its drop counts the connection closed.
    let Admission { accepted, handshake, mut evicted, established, per_ip, meter, open: _open } =
        admission;
    let deadline = accepted + limits.handshake_timeout;
    let admitted = tokio::select! {
        // An eviction already sent wins over a handshake that could go on.
        biased;
        _ = &mut evicted => {
            meter.refused.increment(1);
            tracing::debug!(%remote, "closing a handshake: its place went to a newer connection");
            return;
        }
        admitted = admit(tcp, remote, &tls, &handshake, &established, &per_ip, deadline) => admitted,
        _ = stopped(&mut shutdown) => return,
    };
    let (tls, _held) = match admitted {
        Ok((tls, permit, slot)) => {
            meter.ok.increment(1);
            (tls, (permit, slot))
        }
        Err(e) => {
            meter.not_admitted(&e);
            tracing::debug!(%remote, "closing the connection: {e}");
            return;
        }
    };
    // Established: its handshake place is free for the next connection.
    drop(handshake);
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
        identity: std::sync::Mutex::new(None),
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
    let io = Lingering(Arc::new(std::sync::Mutex::new(tls)));
    let lingering = io.clone();
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let age = tokio::time::sleep(limits.connection_max_age);
    tokio::pin!(age);
    let why = tokio::select! {
        ended = served.as_mut() => {
            match ended {
                Ok(()) => {
                    // Its slot is free at once; the socket lingers a moment on its own.
                    drop(_held);
                    lingering.drain(&limits).await;
                }
                Err(e) => tracing::debug!(%remote, error = %e, "connection ended with an error"),
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
        // Lingering is for clients mid-body; a listener shutting down keeps to its deadline.
        Ok(Ok(())) if !*shutdown.borrow() => {
            drop(_held);
            lingering.drain(&limits).await;
        }
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "connection ended with an error"),
        Err(_) => tracing::debug!(%remote, "connection did not finish in time; dropped"),
    }
}

/// A connection's stream, shared between hyper and the accept loop, so that once hyper has
/// answered and closed its side the loop can still read what the client sends ([`ServeLimits::linger`]).
/// Each poll locks for that poll only; hyper and the loop never poll it at the same time.
struct Lingering<T>(Arc<std::sync::Mutex<T>>);

impl<T> Clone for Lingering<T> {
    fn clone(&self) -> Self {
        Lingering(self.0.clone())
    }
}

impl<T> Lingering<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Lingering<T> {
    /// Reads and drops what the client still sends, until it closes, `linger` passes or
    /// `linger_bytes_max` is read; then the stream is dropped with nothing unread (no reset).
    async fn drain(&self, limits: &ServeLimits) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut read: u64 = 0;
        let drain = async {
            while read < limits.linger_bytes_max {
                let got = std::future::poll_fn(|cx| {
                    let mut rb = tokio::io::ReadBuf::new(&mut buf);
                    let mut io = self.lock();
                    std::pin::Pin::new(&mut *io)
                        .poll_read(cx, &mut rb)
                        .map_ok(|()| rb.filled().len())
                })
                .await;
                match got {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read += n as u64,
                }
            }
        };
        let _ = tokio::time::timeout(limits.linger, drain).await;
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Lingering<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Lingering<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.lock()).poll_shutdown(cx)
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    type Entered = (HandshakeSlot, oneshot::Receiver<()>);

    /// A pool of `max` places whose handshakes are protected for 1 s, and a clock for it.
    fn pool(max: usize) -> (Arc<Handshakes>, tokio::time::Instant) {
        (Handshakes::new(max, Duration::from_secs(4)), tokio::time::Instant::now())
    }

    fn enter(pool: &Arc<Handshakes>, from: u8, at: tokio::time::Instant) -> Entered {
        Handshakes::enter(pool, ip(from), at).expect("a place")
    }

    /// Whether the connection was chosen to close.
    fn closed(entered: &mut Entered) -> bool {
        entered.1.try_recv().is_ok()
    }

    #[test]
    fn silent_sockets_give_way_heaviest_address_first_then_oldest() {
        let (pool, t0) = pool(4);
        // A flooding address takes three places, a partner one: none sends a byte yet.
        let mut flood: Vec<_> = (0..3).map(|_| enter(&pool, 1, t0)).collect();
        let mut partner = enter(&pool, 2, t0);
        // A newcomer from a third address takes the flooder's oldest place.
        let mut third = enter(&pool, 3, t0);
        assert!(closed(&mut flood[0]));
        assert!(!closed(&mut flood[1]) && !closed(&mut partner));
        // The flooder's own newcomer pushes out the flooder's next oldest, no one else's.
        let _again = enter(&pool, 1, t0);
        assert!(closed(&mut flood[1]));
        assert!(!closed(&mut partner) && !closed(&mut third));
        // The partner's second: the flooder's two are no more than the partner's would be, and on
        // a tie the newcomer's own address gives way.
        let _second = enter(&pool, 2, t0);
        assert!(closed(&mut partner));
        assert!(!closed(&mut flood[2]) && !closed(&mut third));
        let table = pool.table();
        assert_eq!(table.silent.len() + table.talking.len(), 4);
    }

    #[test]
    fn silent_sockets_go_before_handshakes_under_way() {
        let (pool, t0) = pool(3);
        let mut talking: Vec<_> = (0..2).map(|_| enter(&pool, 1, t0)).collect();
        for (slot, _) in &talking {
            slot.hello();
        }
        // A silent socket, newer, from an address holding fewer places.
        let mut silent = enter(&pool, 2, t0);
        let (new, _) = enter(&pool, 3, t0);
        assert!(closed(&mut silent));
        assert!(!closed(&mut talking[0]) && !closed(&mut talking[1]));
        new.hello();
        // No silent one left: address 1 holds more than a fresh address would, so its oldest goes,
        // young as it is.
        let _next = enter(&pool, 4, t0);
        assert!(closed(&mut talking[0]));
    }

    #[test]
    fn handshakes_under_way_are_protected_until_old_within_a_fair_share() {
        let (pool, t0) = pool(3);
        let talk = |from: u8| {
            let entered = enter(&pool, from, t0);
            entered.0.hello();
            entered
        };
        // One address's burst, each past its ClientHello.
        let mut burst: Vec<_> = (0..3).map(|_| talk(9)).collect();
        // Young: a newcomer from the same address is closed, not one of the burst.
        assert!(Handshakes::enter(&pool, ip(9), t0).is_none());
        // Newcomers from addresses holding fewer take the burst's places, young as they are.
        let mut seven = talk(7);
        assert!(closed(&mut burst[0]));
        let mut eight = talk(8);
        assert!(closed(&mut burst[1]));
        // One place each now: age decides, and the oldest has not had its second yet...
        assert!(Handshakes::enter(&pool, ip(6), t0 + Duration::from_millis(999)).is_none());
        // ...and now it has.
        let _late = enter(&pool, 6, t0 + Duration::from_secs(1));
        assert!(closed(&mut burst[2]));
        assert!(!closed(&mut seven) && !closed(&mut eight));
    }

    #[test]
    fn behind_one_address_the_oldest_silent_socket_goes() {
        let (pool, t0) = pool(3);
        let mut held: Vec<_> = (0..3).map(|_| enter(&pool, 9, t0)).collect();
        for i in 0..3 {
            held.push(enter(&pool, 9, t0));
            assert!(closed(&mut held[i]), "the {i}th");
            assert!(!closed(&mut held[i + 1]));
        }
    }

    #[test]
    fn handshake_places_are_given_back_and_nothing_is_closed_below_the_limit() {
        let (pool, t0) = pool(2);
        let (one, mut one_closed) = enter(&pool, 1, t0);
        let mut two = enter(&pool, 1, t0);
        one.hello();
        drop(one);
        let _three = enter(&pool, 1, t0);
        // `one` left by itself (its sender dropped with its place); `two` was not pushed out.
        assert!(one_closed.try_recv().is_err());
        assert!(!closed(&mut two));
        let table = pool.table();
        assert_eq!((table.silent.len(), table.talking.len()), (2, 0));
        assert!(table.talking.hosts.is_empty() && table.talking.rank.is_empty());
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
