//! Serving HTTPS with mTLS: the accept loop shared by the bridge's listeners and the sandbox
//! acquirer. A connection permit is taken before `accept` (so `connections_max` bounds open
//! sockets), the TLS handshake has a deadline, HTTP/1.1 and HTTP/2 are served by hyper, and
//! shutdown stops accepting, lets every connection finish its requests, then returns.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
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
    /// chain is verified once, not per request).
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

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub connections_max: usize,
    pub handshake_timeout: Duration,
}

/// Serves `listener` until `shutdown` turns true, then drains connections and returns.
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, Arc<Conn>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Reset>> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    loop {
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
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
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
                kx_group: session
                    .negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name())),
                identity: std::sync::OnceLock::new(),
            });
            let service = hyper::service::service_fn(move |req| handler(req, conn.clone()));
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
