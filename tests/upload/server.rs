//! A small raw HTTP/1.1 test server on loopback that plays the FE or the BE of Stream Load.
//!
//! Raw rather than hyper: the tests must see exactly which bytes arrive and when (no body at
//! the FE, the body only after `100 Continue` or the client's wait), and decide exactly when
//! the server answers, stays silent or cuts the connection. Every server stops by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long any server lives, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(30);

/// How long the FE and header-phase rejections keep reading after their answer, to catch a
/// body sent when it should not be: longer than the client's one-second wait for 100.
const LINGER: Duration = Duration::from_millis(2500);

/// A CA and a server certificate for `127.0.0.1` and `localhost` signed by it.
pub(crate) struct TestCa {
    pub(crate) ca_pem: String,
    pub(crate) server: Arc<rustls::ServerConfig>,
}

pub(crate) fn test_ca() -> TestCa {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sluice upload test ca");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    TestCa {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// What the server does with each request.
#[derive(Clone, Debug)]
pub(crate) enum Behaviour {
    /// The FE: 307 to `location` at once, `Connection: close`, never reads the body on purpose
    /// (but counts what arrives until the client goes).
    Redirect { location: String },
    /// The BE: checks `Authorization` against `auth` (a wrong one is refused in the header
    /// phase, as the BE does), sends `100 Continue` if `send_continue`, reads Content-Length
    /// bytes, then does `then`.
    Load {
        auth: String,
        send_continue: bool,
        then: AfterBody,
        /// Keep the body in `Seen::body`; otherwise only count it (for large bodies).
        keep_body: bool,
    },
    /// Sends `100 Continue`, reads `after` body bytes, answers a `Fail` and stops reading,
    /// as a BE that gives up in the middle of a body.
    AnswerMidBody { after: usize },
    /// 401 with the FE's RestBaseResult at once; the connection stays open.
    Unauthorized,
    /// `get_load_state`: checks `auth`, answers the state.
    LabelState { auth: String, state: String },
    /// 200 with `body` as text, whatever was asked.
    Text { body: String },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum AfterBody {
    /// Answer a BE Success JSON.
    Success,
    /// Close the connection without a word.
    Cut,
    /// Keep the connection open and say nothing.
    Silent,
}

/// What one connection brought.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    /// Every byte after the head that arrived (unless the behaviour only counts them).
    pub(crate) body: Vec<u8>,
    /// How many bytes after the head arrived.
    pub(crate) body_len: usize,
    /// From the end of the head to the first body byte.
    pub(crate) first_body_byte_after: Option<Duration>,
}

impl Seen {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serve `behaviour` on 127.0.0.1:0, over TLS when `tls` is given.
    pub(crate) async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        behaviour: Behaviour,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, seen) = mpsc::unbounded_channel();
        let count = connections.clone();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);

        let task = tokio::spawn(async move {
            let accept_loop = async {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let (tx, behaviour, acceptor) =
                        (tx.clone(), behaviour.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let stream: Box<dyn Io> = match acceptor {
                            Some(acceptor) => match acceptor.accept(tcp).await {
                                Ok(tls) => Box::new(tls),
                                Err(_) => return,
                            },
                            None => Box::new(tcp),
                        };
                        let served =
                            tokio::time::timeout(SERVER_LIFETIME, serve(stream, &behaviour));
                        if let Ok(Some(seen)) = served.await {
                            let _ = tx.send(seen);
                        }
                    });
                }
            };
            let _ = tokio::time::timeout(SERVER_LIFETIME, accept_loop).await;
        });
        Server {
            addr,
            connections,
            seen,
            task,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next finished connection; panics after five seconds without one.
    pub(crate) async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), self.seen.recv())
            .await
            .expect("no request reached the test server")
            .expect("test server stopped")
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn serve(mut stream: Box<dyn Io>, behaviour: &Behaviour) -> Option<Seen> {
    let (head, leftover) = read_head(&mut stream).await?;
    let head_done = Instant::now();
    let mut seen = parse_head(&head);
    seen.body_len = leftover.len();
    seen.body = leftover;
    if !seen.body.is_empty() {
        seen.first_body_byte_after = Some(Duration::ZERO);
    }

    match behaviour {
        Behaviour::Redirect { location } => {
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            write(&mut stream, &answer).await;
            linger(&mut stream, &mut seen, head_done).await;
        }
        Behaviour::Unauthorized => {
            let body = r#"{"status":"FAILED","code":"1","msg":"Access denied for loader@127.0.0.1","message":"Access denied for loader@127.0.0.1"}"#;
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"\"\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            write(&mut stream, &answer).await;
            linger(&mut stream, &mut seen, head_done).await;
        }
        Behaviour::Load {
            auth,
            send_continue,
            then,
            keep_body,
        } => {
            if seen.header("authorization") != Some(auth.as_str()) {
                let body =
                    r#"{"TxnId":-1,"Status":"Fail","Message":"no valid Basic authorization"}"#;
                write(&mut stream, &json_answer(body)).await;
                linger(&mut stream, &mut seen, head_done).await;
                return Some(seen);
            }
            let keep = *keep_body;
            if *send_continue {
                write(&mut stream, "HTTP/1.1 100 Continue\r\n\r\n").await;
            }
            let len: usize = seen.header("content-length")?.parse().ok()?;
            read_body(&mut stream, &mut seen, len, head_done, keep).await;
            if seen.body_len < len {
                return Some(seen);
            }
            match then {
                AfterBody::Success => {
                    let body = format!(
                        r#"{{"TxnId": 42, "Label": "{}", "Status": "Success", "Message": "OK",
                        "NumberTotalRows": 3, "NumberLoadedRows": 3, "NumberFilteredRows": 0,
                        "NumberUnselectedRows": 0, "LoadBytes": {}, "LoadTimeMs": 5}}"#,
                        seen.header("label").unwrap_or(""),
                        seen.body_len
                    );
                    write(&mut stream, &json_answer(&body)).await;
                }
                AfterBody::Cut => {}
                AfterBody::Silent => tokio::time::sleep(SERVER_LIFETIME).await,
            }
        }
        Behaviour::AnswerMidBody { after } => {
            write(&mut stream, "HTTP/1.1 100 Continue\r\n\r\n").await;
            read_body(&mut stream, &mut seen, *after, head_done, false).await;
            let body = r#"{"TxnId":-1,"Status":"Fail","Message":"too many filtered rows"}"#;
            write(&mut stream, &json_answer(body)).await;
            // Neither read nor close: a close with unread bytes would reset the connection
            // and could destroy the answer before the client reads it.
            tokio::time::sleep(LINGER).await;
        }
        Behaviour::LabelState { auth, state } => {
            let body = if seen.header("authorization") == Some(auth.as_str()) {
                format!(
                    r#"{{"state":"{state}","status":"OK","code":"0","msg":"Success","message":"OK"}}"#
                )
            } else {
                r#"{"status":"FAILED","msg":"Need auth information."}"#.to_string()
            };
            write(&mut stream, &json_answer(&body)).await;
        }
        Behaviour::Text { body } => {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            write(&mut stream, &answer).await;
        }
    }
    Some(seen)
}

fn json_answer(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn write(stream: &mut Box<dyn Io>, text: &str) {
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.flush().await;
}

/// Read up to the end of the head; returns the head and any bytes after it.
async fn read_head(stream: &mut Box<dyn Io>) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(head: &str) -> Seen {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Seen {
        method,
        target,
        headers,
        body: Vec::new(),
        body_len: 0,
        first_body_byte_after: None,
    }
}

async fn read_body(
    stream: &mut Box<dyn Io>,
    seen: &mut Seen,
    len: usize,
    since: Instant,
    keep: bool,
) {
    let mut chunk = vec![0u8; 256 * 1024];
    while seen.body_len < len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                seen.first_body_byte_after
                    .get_or_insert_with(|| since.elapsed());
                seen.body_len += n;
                if keep {
                    seen.body.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// After an answer that came before the body: count what still arrives until the client
/// closes, or `LINGER` passes.
async fn linger(stream: &mut Box<dyn Io>, seen: &mut Seen, since: Instant) {
    let _ = tokio::time::timeout(LINGER, read_body(stream, seen, usize::MAX, since, true)).await;
}
