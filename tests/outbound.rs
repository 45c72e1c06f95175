//! What the bridge reads from the endpoints it calls (issue 12, items 5 and 14): the acquirer
//! client and the webhook sender read at most their configured number of answer bytes, and the
//! acquirer client calls an answer declined (`Rejected`) only when the acquirer's API refuses
//! explicitly; everything ambiguous is `Unknown`. Proved against a scripted TLS server on loopback
//! that answers byte for byte (including an endless body, whose writer reports whether the client
//! went away), and against the real sandbox acquirer.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use qrbridge_adapters::acquirer::wire::{Instruction, InstructionStatus};
use qrbridge_adapters::acquirer::{
    AcquirerClient, AcquirerError, AcquirerRequest, AcquirerResponse,
};
use qrbridge_adapters::webhook::{DeliveryError, WebhookSender};
use qrbridge_fx::{Amount, Currency};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Safety net for waits on signals; never reached when the code is right.
const WAIT: Duration = Duration::from_secs(30);

/// An endless body stops here, so a client that does read on cannot eat the machine's memory
/// (the test then fails on how the writer ended).
const ENDLESS_CAP_BYTES: u64 = 64 << 20;

/// What the scripted server answers to every request.
#[derive(Clone)]
enum Answer {
    /// These bytes, then the connection is closed.
    Bytes(Vec<u8>),
    /// This head (status line and headers, chunked), then body chunks until the client goes away.
    Endless(String),
}

/// How an endless answer's writer stopped.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client closed the connection after this many body bytes.
    ClientLeft(u64),
    /// The writer reached [`ENDLESS_CAP_BYTES`]: the client kept reading.
    CapReached,
}

struct Scripted {
    addr: SocketAddr,
    ended: mpsc::UnboundedReceiver<Ended>,
}

/// A TLS server (the dev PKI's `server` certificate, no client authentication) on loopback.
async fn scripted(pki: &Path, answer: Answer) -> Scripted {
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            qrbridge::tls::load_certs(&pki.join("server.crt")).unwrap(),
            qrbridge::tls::load_key(&pki.join("server.key")).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, ended) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, answer, tx) = (acceptor.clone(), answer.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                if !read_request(&mut tls).await {
                    return;
                }
                match answer {
                    Answer::Bytes(b) => {
                        let _ = tls.write_all(&b).await;
                        let _ = tls.shutdown().await;
                    }
                    Answer::Endless(head) => {
                        if tls.write_all(head.as_bytes()).await.is_err() {
                            let _ = tx.send(Ended::ClientLeft(0));
                            return;
                        }
                        let chunk = [b'7'; 16 * 1024];
                        let mut sent = 0u64;
                        loop {
                            if sent >= ENDLESS_CAP_BYTES {
                                let _ = tx.send(Ended::CapReached);
                                return;
                            }
                            let frame = [b"4000\r\n".as_slice(), &chunk, b"\r\n"].concat();
                            if tls.write_all(&frame).await.is_err() {
                                let _ = tx.send(Ended::ClientLeft(sent));
                                return;
                            }
                            sent += chunk.len() as u64;
                        }
                    }
                }
            });
        }
    });
    Scripted { addr, ended }
}

/// Reads one request (head, and a body by `content-length`). False when the client went away.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&byte[..n]),
        }
    }
    true
}

/// A whole HTTP/1.1 answer with `connection: close`.
fn answer(status: &str, content_type: &str, body: &str) -> Answer {
    Answer::Bytes(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn pki() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    qrbridge::pki::write_dev_pki(&pki, &qrbridge::pki::Ca::new("test CA").unwrap()).unwrap();
    (dir, pki)
}

fn acquirer(pki: &Path, base: &str, answer_bytes_max: usize) -> AcquirerClient {
    AcquirerClient::new(
        "scripted",
        base,
        support::daemon::client_config(pki, Some("bridge-client")),
        Duration::from_secs(5),
        WAIT,
    )
    .with_answer_bytes_max(answer_bytes_max)
}

fn sender(pki: &Path, addr: SocketAddr, answer_bytes_max: usize) -> WebhookSender {
    WebhookSender::new(
        &format!("https://{addr}/hooks"),
        b"a-secret-of-some-length",
        support::daemon::client_config(pki, Some("bridge-client")),
        Duration::from_secs(5),
        WAIT,
    )
    .with_answer_bytes_max(answer_bytes_max)
}

fn instruction(fen: i64) -> Instruction {
    Instruction {
        instruction_id: format!("pay_outbound_{fen}"),
        merchant_id: "M1".into(),
        scheme: "EMVCO".into(),
        code: "000201".into(),
        amount: Amount::from_minor(Currency::CNY, fen).unwrap(),
    }
}

async fn send(client: &AcquirerClient) -> Result<AcquirerResponse, AcquirerError> {
    tokio::time::timeout(WAIT, client.execute(AcquirerRequest::Send(instruction(2_372))))
        .await
        .expect("the client answers within its own timeout")
}

/// Waits for the scripted server's report on its endless writer.
async fn how_it_ended(s: &mut Scripted) -> Ended {
    tokio::time::timeout(WAIT, s.ended.recv()).await.expect("the writer ends").unwrap()
}

#[tokio::test]
async fn an_endless_acquirer_answer_is_unknown_and_not_read_on() {
    let (_dir, pki) = pki();
    for status in ["200 OK", "400 Bad Request", "503 Service Unavailable"] {
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
             transfer-encoding: chunked\r\n\r\n"
        );
        let mut server = scripted(&pki, Answer::Endless(head)).await;
        let client = acquirer(&pki, &format!("https://{}", server.addr), 64 * 1024);
        match send(&client).await {
            Err(AcquirerError::Unknown(e)) => {
                assert!(e.contains("longer than 65536 bytes"), "{status}: {e}")
            }
            other => panic!("{status}: an endless answer must be unknown, got {other:?}"),
        }
        drop(client);
        match how_it_ended(&mut server).await {
            Ended::ClientLeft(_) => {}
            Ended::CapReached => panic!("{status}: the client read {ENDLESS_CAP_BYTES} bytes"),
        }
    }
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let (_dir, pki) = pki();
    // Says 10 GB and sends a few bytes: refused on the declared length, not on what came.
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                content-length: 10000000000\r\n\r\n{\"instruction_id\"";
    let server = scripted(&pki, Answer::Bytes(head.as_bytes().to_vec())).await;
    let client = acquirer(&pki, &format!("https://{}", server.addr), 64 * 1024);
    match send(&client).await {
        Err(AcquirerError::Unknown(e)) => assert!(e.contains("longer than 65536"), "{e}"),
        other => panic!("a 10 GB answer must be unknown, got {other:?}"),
    }
}

#[tokio::test]
async fn only_an_explicit_refusal_is_rejected_everything_ambiguous_is_unknown() {
    let (_dir, pki) = pki();
    let approved =
        r#"{"instruction_id":"pay_outbound_2372","status":"APPROVED","acquirer_ref":"R1"}"#;
    let refusal = r#"{"error":"bad instruction"}"#;
    let json = "application/json";
    let html = "text/html";
    #[derive(Debug)]
    enum Want {
        Approved,
        Rejected(u16),
        Unknown,
    }
    let long_refusal = format!(r#"{{"error":"{}"}}"#, "x".repeat(2_000));
    let cases: Vec<(&str, &str, String, Want)> = vec![
        ("200 OK", json, approved.into(), Want::Approved),
        ("200 OK", "application/json; charset=utf-8", approved.into(), Want::Approved),
        // 200 that is not the API's answer: a captive portal, a truncated or foreign body.
        ("200 OK", html, "<html>hello</html>".into(), Want::Unknown),
        ("200 OK", json, r#"{"ok":true}"#.into(), Want::Unknown),
        // Other 2xx and 3xx are not answers of this API.
        ("201 Created", json, approved.into(), Want::Unknown),
        ("202 Accepted", json, approved.into(), Want::Unknown),
        ("204 No Content", json, String::new(), Want::Unknown),
        ("302 Found", html, "<a href=/x>moved</a>".into(), Want::Unknown),
        // The API's own refusals.
        ("400 Bad Request", json, refusal.into(), Want::Rejected(400)),
        ("403 Forbidden", json, refusal.into(), Want::Rejected(403)),
        ("404 Not Found", json, refusal.into(), Want::Rejected(404)),
        ("422 Unprocessable Entity", json, refusal.into(), Want::Rejected(422)),
        // A refusal status without the API's error body: a proxy's or load balancer's page.
        ("400 Bad Request", html, "<h1>400 Bad Request</h1>nginx".into(), Want::Unknown),
        ("403 Forbidden", json, r#"{"message":"Forbidden"}"#.into(), Want::Unknown),
        ("404 Not Found", "text/plain", r#"{"error":"no route"}"#.into(), Want::Unknown),
        ("400 Bad Request", json, r#"{"error":""}"#.into(), Want::Unknown),
        // Statuses after which the instruction may exist or go through on a retry.
        ("408 Request Timeout", json, refusal.into(), Want::Unknown),
        ("409 Conflict", json, refusal.into(), Want::Unknown),
        ("429 Too Many Requests", json, refusal.into(), Want::Unknown),
        ("499 Client Closed Request", json, refusal.into(), Want::Unknown),
        // Server errors.
        ("500 Internal Server Error", json, refusal.into(), Want::Unknown),
        ("502 Bad Gateway", html, "<h1>502</h1>".into(), Want::Unknown),
        ("503 Service Unavailable", json, refusal.into(), Want::Unknown),
        ("504 Gateway Timeout", html, String::new(), Want::Unknown),
        // A refusal whose body is over the limit is not read, so it is no refusal.
        ("400 Bad Request", json, long_refusal, Want::Unknown),
    ];
    for (status, content_type, body, want) in cases {
        let server = scripted(&pki, answer(status, content_type, &body)).await;
        let client = acquirer(&pki, &format!("https://{}", server.addr), 1_024);
        let got = send(&client).await;
        let ok = match (&want, &got) {
            (Want::Approved, Ok(AcquirerResponse::Instruction(a))) => {
                a.status == InstructionStatus::Approved
            }
            (Want::Rejected(s), Err(AcquirerError::Rejected { status, message })) => {
                status == s && message == "bad instruction"
            }
            (Want::Unknown, Err(AcquirerError::Unknown(_))) => true,
            _ => false,
        };
        assert!(ok, "{status} {content_type} {body:.60}: want {want:?}, got {got:?}");
    }
}

#[tokio::test]
async fn the_sandbox_acquirers_answers_classify_as_the_protocol_says() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let sandbox = support::pki_and_sandbox(&pki, 30_000).await;
    let base = format!("https://{}", sandbox.addr());
    let client = acquirer(&pki, &base, 64 * 1024);
    let run = |fen: i64| client.execute(AcquirerRequest::Send(instruction(fen)));
    // A decline is an answer (200, DECLINED), not an error.
    match run(1_051).await {
        Ok(AcquirerResponse::Instruction(a)) => assert_eq!(a.status, InstructionStatus::Declined),
        other => panic!("a decline is an answer: {other:?}"),
    }
    // 500, nothing processed: only an inquiry can tell, so unknown.
    assert!(matches!(run(1_054).await, Err(AcquirerError::Unknown(_))));
    // The API's own 404 with its error body: an explicit refusal.
    let lost = acquirer(&pki, &format!("{base}/no-such-prefix"), 64 * 1024);
    match lost.execute(AcquirerRequest::Inquire("pay_x".into())).await {
        Err(AcquirerError::Rejected { status: 404, message }) => {
            assert_eq!(message, "no such route")
        }
        other => panic!("the sandbox's 404 is a refusal: {other:?}"),
    }
    // Nothing listening: nothing was sent.
    let dead = acquirer(&pki, "https://127.0.0.1:1", 64 * 1024);
    assert!(matches!(
        dead.execute(AcquirerRequest::Send(instruction(1_000))).await,
        Err(AcquirerError::NotSent(_))
    ));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_webhook_answer_is_judged_by_its_status_and_its_body_is_not_read_on() {
    let (_dir, pki) = pki();
    let chunked = |status: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
        )
    };
    for (status, want) in [("200 OK", Ok(())), ("503 Service Unavailable", Err(503))] {
        let mut server = scripted(&pki, Answer::Endless(chunked(status))).await;
        let hooks = sender(&pki, server.addr, 4 * 1024);
        let got = tokio::time::timeout(WAIT, hooks.deliver("evt_1", Bytes::from_static(b"{}"), 0))
            .await
            .expect("the sender answers within its own timeout");
        match (want, got) {
            (Ok(()), Ok(())) => {}
            (Err(s), Err(DeliveryError::Status(g))) if s == g => {}
            (want, got) => panic!("{status}: want {want:?}, got {got:?}"),
        }
        drop(hooks);
        match how_it_ended(&mut server).await {
            Ended::ClientLeft(_) => {}
            Ended::CapReached => panic!("{status}: the sender read {ENDLESS_CAP_BYTES} bytes"),
        }
    }
    // A declared length over the limit is not read at all, and the 2xx still counts.
    let server = scripted(
        &pki,
        Answer::Bytes(b"HTTP/1.1 200 OK\r\ncontent-length: 10000000000\r\n\r\nok".to_vec()),
    )
    .await;
    let hooks = sender(&pki, server.addr, 4 * 1024);
    let got = tokio::time::timeout(WAIT, hooks.deliver("evt_2", Bytes::from_static(b"{}"), 0))
        .await
        .expect("the sender does not wait for a body it will not read");
    assert_eq!(got, Ok(()));
}
