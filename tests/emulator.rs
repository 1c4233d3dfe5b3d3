//! The emulator on the wire: a raw HTTP/1.1 client of its own (rustls with the emulator's CA)
//! drives the FE, the BE and the proxy over real TCP/TLS on loopback, byte by byte, so that
//! what is checked is what a real client would see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use sluice::emulator::{Emulator, EmulatorOptions, Fault, Mode, PUBLISH_DELAY, TableSpec};

const PASSWORD: &str = "sluice-emulator";

/// Every test body is bounded in time.
const TEST_LIMIT: Duration = Duration::from_secs(30);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One parsed response.
#[derive(Debug)]
struct Resp {
    body: String,
    headers: Vec<(String, String)>,
    status: u16,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A raw client connection.
struct Client {
    buf: Vec<u8>,
    stream: Box<dyn Stream>,
}

impl Client {
    async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let stream: Box<dyn Stream> = match tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = ServerName::try_from("localhost").unwrap();
                Box::new(connector.connect(name, tcp).await.unwrap())
            }
        };
        Client {
            buf: Vec::new(),
            stream,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    /// Reads more bytes; false at end of stream (a reset counts as the end too).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` when the server closed without one.
    async fn response(&mut self) -> Option<Resp> {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "partial response: {:?}", self.buf);
                return None;
            }
        };
        let head = String::from_utf8(self.buf.drain(..head_end).collect()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut resp = Resp {
            body: String::new(),
            headers,
            status,
        };
        let length: usize = resp
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while self.buf.len() < length {
            assert!(self.fill().await, "body cut short");
        }
        resp.body = String::from_utf8(self.buf.drain(..length).collect()).unwrap();
        Some(resp)
    }

    /// Whether the server closes the connection (within a few seconds) without more bytes.
    async fn is_closed(&mut self) -> bool {
        let closed = tokio::time::timeout(Duration::from_secs(5), self.fill()).await;
        matches!(closed, Ok(false)) && self.buf.is_empty()
    }
}

/// The emulator under test plus how to reach it.
struct Harness {
    emulator: Emulator,
    tls: TlsConnector,
}

impl Harness {
    async fn start(opts: EmulatorOptions) -> Harness {
        let emulator = Emulator::start(opts).await.unwrap();
        let tls = connector(emulator.ca_pem());
        Harness { emulator, tls }
    }

    async fn new(mode: Mode) -> Harness {
        Harness::start(EmulatorOptions {
            mode,
            tables: tables(),
            ..EmulatorOptions::default()
        })
        .await
    }

    async fn fe(&self) -> Client {
        Client::connect(self.emulator.fe_addr(), Some(&self.tls)).await
    }

    async fn be(&self, tls: bool) -> Client {
        Client::connect(self.emulator.be_addr(), tls.then_some(&self.tls)).await
    }

    /// A full load on the BE as a careful client does it: head with Expect, wait for 100, body.
    /// Returns whether 100 Continue came, and the answer.
    async fn load_on(&self, client: &mut Client, load: &Load) -> (bool, Option<Resp>) {
        client.send(load.head().as_bytes()).await;
        let first = client.response().await;
        match first {
            Some(resp) if resp.status == 100 => {
                client.send(&load.body).await;
                (true, client.response().await)
            }
            other => (false, other),
        }
    }

    async fn load(&self, load: &Load) -> (bool, Option<Resp>) {
        let mut client = self.be(false).await;
        self.load_on(&mut client, load).await
    }

    async fn label_state(&self, database: &str, label: &str) -> String {
        let mut fe = self.fe().await;
        let target = format!("/api/{database}/get_load_state?label={label}");
        fe.send(request("GET", &target, &[auth()]).as_bytes()).await;
        let resp = fe.response().await.unwrap();
        assert_eq!(resp.status, 200);
        resp.json()["state"].as_str().unwrap_or("").to_string()
    }
}

fn tables() -> Vec<TableSpec> {
    vec![
        TableSpec {
            columns: 3,
            database: "db".into(),
            table: "t".into(),
        },
        TableSpec {
            columns: 2,
            database: "db".into(),
            table: "pairs".into(),
        },
    ]
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

fn auth_as(user: &str, password: &str) -> (&'static str, String) {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    ("Authorization", format!("Basic {token}"))
}

fn auth() -> (&'static str, String) {
    auth_as("root", PASSWORD)
}

fn request(method: &str, target: &str, headers: &[(&str, String)]) -> String {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head + "\r\n"
}

/// A load request under construction.
#[derive(Clone)]
struct Load {
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    target: String,
}

impl Load {
    fn new(table: &str, label: &str, body: &[u8]) -> Load {
        Load {
            body: body.to_vec(),
            headers: vec![
                auth(),
                ("label", label.to_string()),
                ("column_separator", ",".into()),
            ],
            target: format!("/api/db/{table}/_stream_load"),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Load {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.to_string()));
        self
    }

    fn without(mut self, name: &str) -> Load {
        self.headers.retain(|(n, _)| *n != name);
        self
    }

    fn head(&self) -> String {
        let mut headers = self.headers.clone();
        headers.push(("Expect", "100-continue".into()));
        headers.push(("Content-Length", self.body.len().to_string()));
        request("PUT", &self.target, &headers)
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("test took too long");
}

#[tokio::test]
async fn fe_redirects_with_307_and_closes() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let mut fe = h.fe().await;
        let load = Load::new("t", "l1", b"1,2,3\n");
        let head = load.head().replace("_stream_load", "_stream_load?x=1&y=2");
        fe.send(head.as_bytes()).await;
        let resp = fe.response().await.unwrap();
        assert_eq!(resp.status, 307, "the FE never sends 100 Continue");
        let be_port = h.emulator.be_addr().port();
        assert_eq!(
            resp.header("location"),
            Some(format!("http://127.0.0.1:{be_port}/api/db/t/_stream_load?x=1&y=2").as_str())
        );
        assert_eq!(resp.header("connection"), Some("close"));
        assert_eq!(resp.body, "");
        assert!(fe.is_closed().await, "the FE closes after a load answer");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 0);
    })
    .await;
}

#[tokio::test]
async fn fe_refuses_missing_and_wrong_credentials_with_401() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load = Load::new("t", "l1", b"1,2,3\n").without("Authorization");
        let mut fe = h.fe().await;
        fe.send(load.head().as_bytes()).await;
        let resp = fe.response().await.unwrap();
        assert_eq!(resp.status, 401);
        assert_eq!(resp.header("www-authenticate"), Some("Basic realm=\"\""));
        assert_eq!(
            resp.body,
            r#"{"status":"FAILED","code":"1","msg":"Need auth information.","message":"Need auth information."}"#
        );

        let (name, value) = auth_as("root", "wrong");
        let load = load.header(name, &value);
        let mut fe = h.fe().await;
        fe.send(load.head().as_bytes()).await;
        let resp = fe.response().await.unwrap();
        assert_eq!(resp.status, 401);
        assert_eq!(resp.json()["msg"], "Access denied for root@127.0.0.1");
    })
    .await;
}

#[tokio::test]
async fn fe_refuses_a_load_without_expect() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let mut fe = h.fe().await;
        let headers = [auth(), ("Content-Length", "6".to_string())];
        fe.send(request("PUT", "/api/db/t/_stream_load", &headers).as_bytes()).await;
        let resp = fe.response().await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.body,
            r#"{"Status":"FAILED","Message":"class com.starrocks.common.DdlException: There is no 100-continue header"}"#
        );
    })
    .await;
}

#[tokio::test]
async fn be_sends_100_continue_then_loads() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let (continued, resp) = h
            .load(&Load::new("t", "first", b"1,2,3\n4,5,6\n7,8,9"))
            .await;
        assert!(continued);
        let resp = resp.unwrap();
        assert_eq!(resp.status, 200);
        let json = resp.json();
        assert_eq!(json["Status"], "Success", "{}", resp.body);
        assert_eq!(json["Message"], "OK");
        assert_eq!(json["Label"], "first");
        assert_eq!(json["NumberTotalRows"], 3);
        assert_eq!(json["NumberLoadedRows"], 3);
        assert_eq!(json["LoadBytes"], 17);
        assert!(json["TxnId"].as_i64().unwrap() > 0);
        assert!(json.get("ErrorURL").is_none());
        assert!(resp.body.starts_with("{\n    \"TxnId\": "), "{}", resp.body);

        let stats = h.emulator.stats();
        assert_eq!(stats.tables["db.t"].rows, 3);
        assert_eq!(stats.tables["db.t"].sample[1], vec!["4", "5", "6"]);
        assert_eq!(stats.labels["db/first"].state, "VISIBLE");
        assert_eq!(h.label_state("db", "first").await, "VISIBLE");
        assert_eq!(h.label_state("db", "never").await, "UNKNOWN");
    })
    .await;
}

#[tokio::test]
async fn be_keeps_the_connection_for_another_load() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let mut be = h.be(false).await;
        for label in ["k1", "k2"] {
            let (_, resp) = h.load_on(&mut be, &Load::new("t", label, b"1,2,3\n")).await;
            assert_eq!(resp.unwrap().json()["Status"], "Success");
        }
        let stats = h.emulator.stats();
        assert_eq!(
            (stats.labels["db/k1"].rows, stats.labels["db/k2"].rows),
            (1, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn be_refuses_in_the_header_phase_before_100_continue() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let good = Load::new("t", "hp", b"1,2,3\n");
        let (name, wrong) = auth_as("root", "wrong");
        let long_sep = "x".repeat(51);
        let cases: Vec<(Load, &str, bool)> = vec![
            (
                good.clone().without("Authorization"),
                "no valid Basic authorization",
                false,
            ),
            (
                good.clone().header(name, &wrong),
                "Access denied for root@127.0.0.1",
                false,
            ),
            (
                good.clone().header("label", "a.b"),
                "Label format error. regex: ^[-\\w]{1,128}$, label: a.b",
                false,
            ),
            (
                good.clone().header("timeout", "ten"),
                "Invalid timeout format",
                false,
            ),
            (
                good.clone().header("format", "parquet"),
                "unknown data format, format=parquet",
                false,
            ),
            (
                Load {
                    target: "/api/nodb/t/_stream_load".into(),
                    ..good.clone()
                },
                "unknown database, database=nodb",
                false,
            ),
            (
                Load {
                    target: "/api/db/nope/_stream_load".into(),
                    ..good.clone()
                },
                "Unknown table 'nope'",
                false,
            ),
            (
                good.clone().header("skip_header", "x"),
                "Invalid csv load skip_header format",
                true,
            ),
            (
                good.clone().header("column_separator", &long_sep),
                "[1, 50]",
                true,
            ),
            (
                good.clone().header("max_filter_ratio", "2"),
                "Invalid max_filter_ratio",
                true,
            ),
            (
                good.clone().header("trim_space", "yes"),
                "Invalid trim space format",
                true,
            ),
        ];
        for (load, message, began) in cases {
            let mut be = h.be(false).await;
            let (continued, resp) = h.load_on(&mut be, &load).await;
            assert!(!continued, "{message}: refused before 100 Continue");
            let resp = resp.unwrap();
            let json = resp.json();
            assert_eq!(resp.status, 200);
            assert_eq!(json["Status"], "Fail", "{}", resp.body);
            assert!(
                json["Message"].as_str().unwrap().contains(message),
                "{}",
                resp.body
            );
            assert_eq!(json["TxnId"].as_i64().unwrap() > 0, began, "{}", resp.body);
            assert!(be.is_closed().await);
        }
        // The plan checks aborted their transactions; the label is free and loads.
        assert_eq!(h.label_state("db", "hp").await, "ABORTED");
        let (_, resp) = h.load(&good).await;
        assert_eq!(resp.unwrap().json()["Status"], "Success");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 1);
    })
    .await;
}

#[tokio::test]
async fn used_label_is_refused_as_finished() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load = Load::new("t", "dup", b"1,2,3\n");
        assert_eq!(h.load(&load).await.1.unwrap().json()["Status"], "Success");
        let (continued, resp) = h.load(&load).await;
        assert!(!continued);
        let json = resp.unwrap().json();
        assert_eq!(json["Status"], "Label Already Exists");
        assert_eq!(json["ExistingJobStatus"], "FINISHED");
        assert_eq!(json["Message"], "Label [dup] has already been used.");
        assert_eq!(json["TxnId"], -1);
        let stats = h.emulator.stats();
        assert_eq!(stats.tables["db.t"].rows, 1);
        assert_eq!(
            (
                stats.labels["db/dup"].attempts,
                stats.labels["db/dup"].commits
            ),
            (2, 1)
        );
    })
    .await;
}

#[tokio::test]
async fn aborted_label_can_be_used_again() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let (_, resp) = h.load(&Load::new("t", "again", b"1,2,3\n4,5\n")).await;
        let json = resp.unwrap().json();
        assert_eq!(json["Status"], "Fail");
        assert_eq!(json["Message"], "too many filtered rows");
        assert_eq!(json["NumberFilteredRows"], 1);
        assert!(json["ErrorURL"].is_string());
        assert_eq!(h.label_state("db", "again").await, "ABORTED");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 0);

        let (_, resp) = h.load(&Load::new("t", "again", b"1,2,3\n4,5,6\n")).await;
        assert_eq!(resp.unwrap().json()["Status"], "Success");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 2);
    })
    .await;
}

#[tokio::test]
async fn labels_are_forgotten_after_the_window() {
    bounded(async {
        let h = Harness::start(EmulatorOptions {
            label_keep: Duration::from_secs(3600),
            tables: tables(),
            ..EmulatorOptions::default()
        })
        .await;
        let load = Load::new("t", "window", b"1,2,3\n");
        assert_eq!(h.load(&load).await.1.unwrap().json()["Status"], "Success");
        h.emulator.advance_clock(Duration::from_secs(3599));
        assert_eq!(h.label_state("db", "window").await, "VISIBLE");
        h.emulator.advance_clock(Duration::from_secs(2));
        assert_eq!(h.label_state("db", "window").await, "UNKNOWN");
        assert_eq!(h.load(&load).await.1.unwrap().json()["Status"], "Success");
        let stats = h.emulator.stats();
        assert_eq!(
            stats.labels["db/window"].commits, 2,
            "the rows went in twice"
        );
        assert_eq!(stats.tables["db.t"].rows, 2);
    })
    .await;
}

#[tokio::test]
async fn separators_skip_header_enclose_and_trim_space() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load =
            Load::new("pairs", "sep1", b"a\x01b\nc\x01d\n").header("column_separator", "\\x01");
        assert_eq!(h.load(&load).await.1.unwrap().json()["NumberLoadedRows"], 2);
        let load = Load::new("pairs", "sep2", b"e||f\r\n")
            .header("column_separator", "||")
            .header("row_delimiter", "\\x0D0A");
        assert_eq!(h.load(&load).await.1.unwrap().json()["NumberLoadedRows"], 1);
        let load = Load::new("pairs", "sep3", b"name,value\n \"g, h\" , i \n")
            .header("skip_header", "1")
            .header("enclose", "\"")
            .header("trim_space", "true");
        let json = h.load(&load).await.1.unwrap().json();
        assert_eq!(
            (
                json["NumberTotalRows"].as_u64(),
                json["NumberLoadedRows"].as_u64()
            ),
            (Some(1), Some(1))
        );
        let sample = &h.emulator.stats().tables["db.pairs"].sample;
        assert_eq!(
            sample,
            &vec![
                vec!["a".to_string(), "b".to_string()],
                vec!["c".to_string(), "d".to_string()],
                vec!["e".to_string(), "f".to_string()],
                vec!["g, h".to_string(), "i".to_string()],
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn filtered_rows_within_the_ratio_load_and_are_listed() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load =
            Load::new("t", "ratio", b"1,2,3\n4,5\n7,8,9\n").header("max_filter_ratio", "0.5");
        let json = h.load(&load).await.1.unwrap().json();
        assert_eq!(json["Status"], "Success");
        assert_eq!(json["NumberTotalRows"], 3);
        assert_eq!(json["NumberLoadedRows"], 2);
        assert_eq!(json["NumberFilteredRows"], 1);
        let url = json["ErrorURL"].as_str().unwrap();
        let be_port = h.emulator.be_addr().port();
        let prefix = format!("http://127.0.0.1:{be_port}/api/_load_error_log?file=error_log_");
        assert!(url.starts_with(&prefix), "{url}");

        let mut be = h.be(false).await;
        let target = url.trim_start_matches(&format!("http://127.0.0.1:{be_port}"));
        be.send(request("GET", target, &[]).as_bytes()).await;
        let log = be.response().await.unwrap();
        assert_eq!(log.status, 200);
        assert!(
            log.body
                .contains("Value count does not match column count. Expect 3, but got 2."),
            "{}",
            log.body
        );
        assert!(log.body.contains("4,5"), "{}", log.body);
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 2);
    })
    .await;
}

#[tokio::test]
async fn empty_body_fails_unless_allowed() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let (continued, resp) = h.load(&Load::new("t", "empty", b"")).await;
        assert!(!continued, "no 100 Continue for an empty body");
        let json = resp.unwrap().json();
        assert_eq!(json["Status"], "Fail");
        assert!(
            json["Message"]
                .as_str()
                .unwrap()
                .starts_with("No partitions have data available")
        );
        assert_eq!(h.label_state("db", "empty").await, "ABORTED");

        let h = Harness::start(EmulatorOptions {
            empty_load_as_error: false,
            tables: tables(),
            ..EmulatorOptions::default()
        })
        .await;
        let json = h
            .load(&Load::new("t", "empty", b""))
            .await
            .1
            .unwrap()
            .json();
        assert_eq!(json["Status"], "Success");
        assert_eq!(json["NumberLoadedRows"], 0);
        assert_eq!(h.label_state("db", "empty").await, "VISIBLE");
    })
    .await;
}

#[tokio::test]
async fn short_body_is_refused() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let mut be = h.be(false).await;
        let load = Load::new("t", "short", b"1,2,3\n");
        let head = load
            .head()
            .replace("Content-Length: 6", "Content-Length: 100");
        be.send(head.as_bytes()).await;
        assert_eq!(be.response().await.unwrap().status, 100);
        be.send(b"1,2,3\n").await;
        be.stream.shutdown().await.unwrap();
        let json = be.response().await.unwrap().json();
        assert_eq!(json["Status"], "Fail");
        assert_eq!(json["Message"], "receive body don't equal with body bytes");
        assert_eq!(h.label_state("db", "short").await, "ABORTED");
    })
    .await;
}

#[tokio::test]
async fn chunked_bodies_load() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let mut be = h.be(false).await;
        let load = Load::new("t", "chunky", b"");
        let mut headers = load.headers.clone();
        headers.push(("Expect", "100-continue".into()));
        headers.push(("Transfer-Encoding", "chunked".into()));
        be.send(request("PUT", &load.target, &headers).as_bytes())
            .await;
        assert_eq!(be.response().await.unwrap().status, 100);
        be.send(b"4\r\n1,2,\r\n8\r\n3\n4,5,6\n\r\n0\r\n\r\n").await;
        let json = be.response().await.unwrap().json();
        assert_eq!(json["Status"], "Success");
        assert_eq!(json["NumberLoadedRows"], 2);
        assert_eq!(json["LoadBytes"], 12);
    })
    .await;
}

#[tokio::test]
async fn proxy_mode_checks_then_loads_on_one_tls_port() {
    bounded(async {
        let h = Harness::new(Mode::Proxy).await;
        assert_eq!(h.emulator.be_addr(), h.emulator.fe_addr());
        let mut proxy = h.fe().await;
        let (continued, resp) = h
            .load_on(&mut proxy, &Load::new("t", "px", b"1,2,3\n"))
            .await;
        assert!(continued, "the proxy says 100 Continue");
        assert_eq!(resp.unwrap().json()["Status"], "Success");
        assert_eq!(h.label_state("db", "px").await, "VISIBLE");

        let mut proxy = h.fe().await;
        let load = Load::new("t", "px2", b"1,2,3\n").without("Authorization");
        let (continued, resp) = h.load_on(&mut proxy, &load).await;
        assert!(!continued);
        assert_eq!(resp.unwrap().status, 401);
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 1);
    })
    .await;
}

#[tokio::test]
async fn tls_be_mode_redirects_to_https() {
    bounded(async {
        let h = Harness::new(Mode::RedirectTlsBe).await;
        let mut fe = h.fe().await;
        let load = Load::new("t", "tlsbe", b"1,2,3\n");
        fe.send(load.head().as_bytes()).await;
        let resp = fe.response().await.unwrap();
        let be_port = h.emulator.be_addr().port();
        let expected = format!("https://127.0.0.1:{be_port}/api/db/t/_stream_load");
        assert_eq!(resp.header("location"), Some(expected.as_str()));
        let mut be = h.be(true).await;
        let (continued, resp) = h.load_on(&mut be, &load).await;
        assert!(continued);
        assert_eq!(resp.unwrap().json()["Status"], "Success");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_loads_run_at_once() {
    bounded(async {
        let h = Arc::new(Harness::new(Mode::Redirect).await);
        let body: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{i},b,c\n").into_bytes())
            .collect();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (h, body) = (h.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let (_, resp) = h.load(&Load::new("t", &format!("par{i}"), &body)).await;
                resp.unwrap().json()["NumberLoadedRows"].as_u64().unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 5000);
        }
        let stats = h.emulator.stats();
        assert_eq!(stats.tables["db.t"].rows, 40_000);
        assert_eq!(stats.tables["db.t"].commits, 8);
        assert_eq!(stats.tables["db.t"].sample.len(), 1000);
    })
    .await;
}

#[tokio::test]
async fn fault_http500_and_close_before_commit() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load = Load::new("t", "f1", b"1,2,3\n");
        h.emulator.inject(Fault::Http500);
        let (continued, resp) = h.load(&load).await;
        assert!(!continued);
        assert_eq!(resp.unwrap().status, 500);
        assert_eq!(h.label_state("db", "f1").await, "UNKNOWN");

        h.emulator.inject(Fault::CloseBeforeCommit);
        let (continued, resp) = h.load(&load).await;
        assert!(continued);
        assert!(resp.is_none(), "closed without an answer");
        assert_eq!(h.label_state("db", "f1").await, "ABORTED");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 0);

        assert_eq!(h.load(&load).await.1.unwrap().json()["Status"], "Success");
    })
    .await;
}

#[tokio::test]
async fn fault_commit_then_close_loses_only_the_answer() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load = Load::new("t", "f2", b"1,2,3\n");
        h.emulator.inject(Fault::CommitThenClose);
        let (continued, resp) = h.load(&load).await;
        assert!(continued);
        assert!(resp.is_none());
        assert_eq!(h.label_state("db", "f2").await, "VISIBLE");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 1);
        let json = h.load(&load).await.1.unwrap().json();
        assert_eq!(json["Status"], "Label Already Exists");
        assert_eq!(json["ExistingJobStatus"], "FINISHED");
    })
    .await;
}

#[tokio::test]
async fn fault_slow_answer_and_publish_timeout() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        h.emulator
            .inject(Fault::SlowAnswer(Duration::from_millis(300)));
        let started = Instant::now();
        let json = h
            .load(&Load::new("t", "f3", b"1,2,3\n"))
            .await
            .1
            .unwrap()
            .json();
        assert_eq!(json["Status"], "Success");
        assert!(started.elapsed() >= Duration::from_millis(300));

        h.emulator.inject(Fault::PublishTimeout);
        let json = h
            .load(&Load::new("t", "f4", b"1,2,3\n"))
            .await
            .1
            .unwrap()
            .json();
        assert_eq!(json["Status"], "Publish Timeout");
        assert!(
            json["Message"]
                .as_str()
                .unwrap()
                .starts_with("Publish timeout. The data will be visible after a while")
        );
        assert_eq!(h.label_state("db", "f4").await, "COMMITTED");
        h.emulator.advance_clock(PUBLISH_DELAY);
        assert_eq!(h.label_state("db", "f4").await, "VISIBLE");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 2);
    })
    .await;
}

#[tokio::test]
async fn fault_mem_limit_and_too_many_versions_abort() {
    bounded(async {
        let h = Harness::new(Mode::Redirect).await;
        let load = Load::new("t", "f5", b"1,2,3\n");
        h.emulator.inject(Fault::MemLimit);
        h.emulator.inject(Fault::TooManyVersions);
        let json = h.load(&load).await.1.unwrap().json();
        assert_eq!(json["Status"], "Fail");
        assert!(
            json["Message"]
                .as_str()
                .unwrap()
                .starts_with("Memory of process exceed limit.")
        );
        let json = h.load(&load).await.1.unwrap().json();
        assert!(
            json["Message"]
                .as_str()
                .unwrap()
                .contains("because of too many versions")
        );
        assert_eq!(h.label_state("db", "f5").await, "ABORTED");
        assert_eq!(h.load(&load).await.1.unwrap().json()["Status"], "Success");
        assert_eq!(h.emulator.stats().tables["db.t"].rows, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_running_for_holds_the_label() {
    bounded(async {
        let h = Arc::new(Harness::new(Mode::Redirect).await);
        let load = Load::new("t", "f6", b"1,2,3\n");
        h.emulator
            .inject(Fault::RunningFor(Duration::from_millis(1500)));
        let first = {
            let (h, load) = (h.clone(), load.clone());
            tokio::spawn(async move { h.load(&load).await.1.unwrap().json() })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.label_state("db", "f6").await, "PREPARE");
        let json = h.load(&load).await.1.unwrap().json();
        assert_eq!(json["Status"], "Label Already Exists");
        assert_eq!(json["ExistingJobStatus"], "RUNNING");
        assert_eq!(first.await.unwrap()["Status"], "Success");
        assert_eq!(h.label_state("db", "f6").await, "VISIBLE");
    })
    .await;
}

#[tokio::test]
async fn test_endpoints_drive_the_emulator_over_http() {
    bounded(async {
        let h = Harness::start(EmulatorOptions {
            label_keep: Duration::from_secs(60),
            tables: tables(),
            ..EmulatorOptions::default()
        })
        .await;
        assert_eq!(
            h.load(&Load::new("t", "ep", b"1,2,3\n"))
                .await
                .1
                .unwrap()
                .json()["Status"],
            "Success"
        );
        let mut fe = h.fe().await;
        fe.send(request("GET", "/_emulator/stats", &[auth()]).as_bytes())
            .await;
        let stats = fe.response().await.unwrap().json();
        assert_eq!(stats["tables"]["db.t"]["rows"], 1);
        assert_eq!(stats["labels"]["db/ep"]["state"], "VISIBLE");

        fe.send(request("POST", "/_emulator/clock?advance=61", &[auth()]).as_bytes())
            .await;
        assert_eq!(fe.response().await.unwrap().json()["status"], "OK");
        assert_eq!(h.label_state("db", "ep").await, "UNKNOWN");

        fe.send(request("POST", "/_emulator/fault?kind=http500", &[auth()]).as_bytes())
            .await;
        assert_eq!(fe.response().await.unwrap().status, 200);
        assert_eq!(
            h.load(&Load::new("t", "ep2", b"1,2,3\n"))
                .await
                .1
                .unwrap()
                .status,
            500
        );

        fe.send(request("POST", "/_emulator/fault?kind=bogus", &[auth()]).as_bytes())
            .await;
        assert_eq!(fe.response().await.unwrap().status, 400);
        fe.send(request("GET", "/_emulator/stats", &[]).as_bytes())
            .await;
        assert_eq!(fe.response().await.unwrap().status, 401);

        fe.send(request("GET", "/api/db/get_load_state", &[auth()]).as_bytes())
            .await;
        assert_eq!(
            fe.response().await.unwrap().json()["msg"],
            "No label selected."
        );
        fe.send(request("GET", "/api/zz/get_load_state?label=x", &[auth()]).as_bytes())
            .await;
        assert_eq!(
            fe.response().await.unwrap().json()["msg"],
            "unknown database, database=zz"
        );
    })
    .await;
}

/// 2 GiB through the BE over plain HTTP in flat memory. Run in release:
/// `cargo test --release --test emulator two_gib -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn two_gib_body_loads_in_flat_memory() {
    let h = Harness::new(Mode::Redirect).await;
    let row = b"12345,some text here,2024-01-01 00:00:00\n";
    let chunk: Vec<u8> = row
        .iter()
        .copied()
        .cycle()
        .take(row.len() * 25_000)
        .collect();
    let rounds = (2u64 << 30) / chunk.len() as u64;
    let total = rounds * chunk.len() as u64;
    let mut be = h.be(false).await;
    let mut load = Load::new("t", "big", b"");
    load.body = Vec::new();
    let head = load
        .head()
        .replace("Content-Length: 0", &format!("Content-Length: {total}"));
    be.send(head.as_bytes()).await;
    assert_eq!(be.response().await.unwrap().status, 100);
    let started = Instant::now();
    for _ in 0..rounds {
        be.stream.write_all(&chunk).await.unwrap();
    }
    be.stream.flush().await.unwrap();
    let json = be.response().await.unwrap().json();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(json["Status"], "Success");
    assert_eq!(
        json["NumberLoadedRows"].as_u64().unwrap(),
        total / row.len() as u64
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?")
        .to_string();
    println!(
        "{:.0} MiB/s end to end, {peak}",
        total as f64 / (1 << 20) as f64 / secs
    );
    let peak_kib: u64 = peak
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(peak_kib < 256 * 1024, "memory is not flat: {peak}");
}
