//! A TLS listener counts how each connection's way in ended and how many are open: real
//! listeners on 127.0.0.1:0 under a real Prometheus recorder (this test binary's own), a real
//! certificate, and peers that fail a handshake (not TLS), finish one, stall past the deadline,
//! or lose their place to a newer connection. Runs on one thread: when a peer sees its socket
//! closed, the server task that closed it has already counted it (it counts in the same poll), so
//! nothing here waits for a count to settle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use qrbridge_adapters::https::{self, ServeLimits};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long a peer waits for the server to answer or close; a bound, not a wait for state.
const BOUND: Duration = Duration::from_secs(30);

struct Listener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Serves `name` on 127.0.0.1:0 with `limits`, answering every request `ok`.
async fn listen(
    name: &'static str,
    tls: Arc<rustls::ServerConfig>,
    limits: ServeLimits,
) -> Listener {
    let listener = https::listen(([127, 0, 0, 1], 0).into()).expect("a loopback port");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(https::serve_named(
        name,
        listener,
        tls,
        limits,
        stopped,
        |_req, _conn| async { Ok(Response::new(Full::new(Bytes::from_static(b"ok")))) },
    ));
    Listener { addr, stop, task }
}

impl Listener {
    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(BOUND, self.task).await.expect("the listener drains").unwrap();
    }
}

/// Reads until the server closes the connection (an alert or a reset may come first).
async fn closed<S: tokio::io::AsyncRead + Unpin>(mut s: S) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(BOUND, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
}

/// The value of the sample `name{labels}` in `text`, label order aside.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<String> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let rest = rest.strip_suffix('}')?;
        let mut have: Vec<&str> = rest.split(',').filter(|p| !p.is_empty()).collect();
        let mut want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        have.sort_unstable();
        want.sort_unstable();
        (n == name && have == want).then(|| value.to_owned())
    })
}

fn handshakes(h: &PrometheusHandle, listener: &str, outcome: &str) -> Option<String> {
    let labels = [("listener", listener), ("outcome", outcome)];
    sample(&h.render(), "qrbridge_tls_handshakes_total", &labels)
}

fn open(h: &PrometheusHandle, listener: &str) -> Option<String> {
    sample(&h.render(), "qrbridge_connections_open", &[("listener", listener)])
}

#[tokio::test]
async fn handshakes_are_counted_by_outcome_and_open_connections_come_and_go() {
    let prom = PrometheusBuilder::new().install_recorder().expect("this binary's only recorder");
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = key.cert.der().clone();
    let server_key =
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let server = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], server_key)
            .unwrap(),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    ));

    let quick = listen("quick", server.clone(), ServeLimits::default()).await;
    // Every outcome's series is there from the start, at zero.
    for outcome in ["ok", "failed", "timeout", "refused"] {
        assert_eq!(handshakes(&prom, "quick", outcome).as_deref(), Some("0"), "{outcome}");
    }
    assert_eq!(open(&prom, "quick").as_deref(), Some("0"));

    // A peer that does not speak TLS: its handshake failed, and it is no longer open.
    let mut plain = TcpStream::connect(quick.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    closed(plain).await;
    assert_eq!(handshakes(&prom, "quick", "failed").as_deref(), Some("1"));
    assert_eq!(open(&prom, "quick").as_deref(), Some("0"));

    // A real client: handshake ok, and open while it is connected (its answer came, so the server
    // has counted it).
    let tcp = TcpStream::connect(quick.addr).await.unwrap();
    let mut tls = client.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(2).any(|w| w == b"ok") {
        let n = tokio::time::timeout(BOUND, tls.read(&mut buf)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(handshakes(&prom, "quick", "ok").as_deref(), Some("1"));
    assert_eq!(open(&prom, "quick").as_deref(), Some("1"));
    // Shutdown closes it; once the listener has drained, nothing is counted open.
    quick.shutdown().await;
    closed(tls).await;
    assert_eq!(open(&prom, "quick").as_deref(), Some("0"));

    // One handshake place and a short deadline: a silent socket loses its place to the next
    // connection (refused), and that one, silent too, runs out of time (timeout).
    let tight = ServeLimits {
        handshakes_max: 1,
        handshake_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    };
    let tight = listen("tight", server, tight).await;
    let first = TcpStream::connect(tight.addr).await.unwrap();
    let second = TcpStream::connect(tight.addr).await.unwrap();
    closed(first).await;
    assert_eq!(handshakes(&prom, "tight", "refused").as_deref(), Some("1"));
    closed(second).await;
    assert_eq!(handshakes(&prom, "tight", "timeout").as_deref(), Some("1"));
    assert_eq!(handshakes(&prom, "tight", "ok").as_deref(), Some("0"));
    assert_eq!(open(&prom, "tight").as_deref(), Some("0"));
    tight.shutdown().await;
    // The other listener's counts are its own.
    assert_eq!(handshakes(&prom, "quick", "refused").as_deref(), Some("0"));
}
