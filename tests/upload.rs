//! The Stream Load exchange against a raw FE and BE on loopback: Expect, redirects,
//! credentials, the body's timing and every way an attempt can end.

#[path = "upload/server.rs"]
mod server;

use std::collections::BTreeMap;
use std::fs;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sluice::config::{ClusterConfig, Endpoint, Scheme, Secret, SslMode};
use sluice::upload::{LabelState, LoadRequest, Reply, UploadError, Uploader, Verdict};

use server::{AfterBody, Behaviour, Server, TestCa, test_ca};

const USER: &str = "loader";
const PASSWORD: &str = "s3cret-pa55";
const LABEL: &str = "sluice_0123abcd-feedbeef";

/// Every test is bounded, whatever happens on the wire.
async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("test timed out")
}

fn auth() -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    format!("Basic {token}")
}

/// A cluster config aimed at `port`, trusting `ca`.
struct Setup {
    _dir: tempfile::TempDir,
    cluster: ClusterConfig,
}

fn setup(ca: &TestCa, scheme: Scheme, port: u16) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    fs::write(&ca_file, &ca.ca_pem).unwrap();
    Setup {
        cluster: ClusterConfig {
            allow_insecure_http: scheme == Scheme::Http,
            ca_file: Some(ca_file),
            client_cert: None,
            client_key: None,
            endpoint: Endpoint {
                scheme,
                host: "127.0.0.1".into(),
                port,
            },
            label_keep: Duration::from_secs(3 * 24 * 3600),
            password: Secret::new(PASSWORD),
            redirect_map: BTreeMap::new(),
            ssl_mode: SslMode::VerifyIdentity,
            timeout: Duration::from_secs(10),
            user: USER.into(),
        },
        _dir: dir,
    }
}

/// A file of `len` bytes of CSV-ish content.
fn data_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let mut content = Vec::with_capacity(len);
    let mut i = 0u64;
    while content.len() < len {
        content.extend_from_slice(format!("{i},row {i}\n").as_bytes());
        i += 1;
    }
    content.truncate(len);
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&content).unwrap();
    file.flush().unwrap();
    (file, content)
}

async fn load(
    uploader: &Uploader,
    file: &tempfile::NamedTempFile,
    len: u64,
) -> Result<Reply, UploadError> {
    let headers = vec![
        ("column_separator".to_string(), ",".to_string()),
        ("max_filter_ratio".to_string(), "0.1".to_string()),
    ];
    let req = LoadRequest {
        database: "sales",
        table: "orders",
        label: LABEL,
        headers: &headers,
        file: Arc::new(file.reopen().unwrap()),
        len,
        sha256: None,
    };
    uploader.load(&req).await
}

fn be(send_continue: bool, then: AfterBody) -> Behaviour {
    Behaviour::Load {
        auth: auth(),
        send_continue,
        then,
        keep_body: true,
    }
}

#[tokio::test]
async fn the_fe_redirect_sends_the_body_only_to_the_mapped_be() {
    bounded(async {
        let ca = test_ca();
        let mut be = Server::start(Some(ca.server.clone()), be(true, AfterBody::Success)).await;
        let location = "http://be-7.cluster.internal:8040/api/sales/orders/_stream_load";
        let mut fe = Server::start(
            Some(ca.server.clone()),
            Behaviour::Redirect {
                location: location.into(),
            },
        )
        .await;
        let mut s = setup(&ca, Scheme::Https, fe.port());
        s.cluster.allow_insecure_http = false;
        s.cluster.redirect_map.insert(
            "be-7.cluster.internal:8040".into(),
            format!("127.0.0.1:{}", be.port()),
        );
        let uploader = Uploader::new(&s.cluster).unwrap();
        let (file, content) = data_file(3 * 1024 * 1024 + 17);

        let started = Instant::now();
        let reply = load(&uploader, &file, content.len() as u64).await.unwrap();
        let elapsed = started.elapsed();

        assert_eq!(
            reply.verdict(),
            Verdict::Loaded {
                publish_pending: false
            }
        );
        assert_eq!(reply.load_bytes, content.len() as u64);
        assert!(
            elapsed < Duration::from_millis(900),
            "waited for nothing: {elapsed:?}"
        );

        let at_fe = fe.next_seen().await;
        assert_eq!(at_fe.method, "PUT");
        assert_eq!(at_fe.target, "/api/sales/orders/_stream_load");
        assert_eq!(at_fe.header("expect"), Some("100-continue"));
        assert_eq!(
            at_fe.header("content-length"),
            Some(content.len().to_string().as_str())
        );
        assert_eq!(at_fe.header("transfer-encoding"), None);
        assert_eq!(at_fe.header("authorization"), Some(auth().as_str()));
        assert!(
            at_fe.body.is_empty(),
            "{} body bytes reached the FE",
            at_fe.body.len()
        );

        let at_be = be.next_seen().await;
        assert_eq!(at_be.target, "/api/sales/orders/_stream_load");
        assert_eq!(at_be.header("authorization"), Some(auth().as_str()));
        assert_eq!(at_be.header("label"), Some(LABEL));
        assert_eq!(at_be.header("column_separator"), Some(","));
        assert_eq!(at_be.header("max_filter_ratio"), Some("0.1"));
        assert_eq!(
            at_be.header("host"),
            Some(format!("127.0.0.1:{}", be.port()).as_str())
        );
        assert!(
            at_be.body == content,
            "the BE got other bytes than the file's"
        );
    })
    .await;
}

#[tokio::test]
async fn an_https_to_http_redirect_is_refused_unless_allowed() {
    bounded(async {
        let ca = test_ca();
        let mut be = Server::start(None, be(true, AfterBody::Success)).await;
        let location = format!(
            "http://127.0.0.1:{}/api/sales/orders/_stream_load",
            be.port()
        );
        let fe = Server::start(
            Some(ca.server.clone()),
            Behaviour::Redirect {
                location: location.clone(),
            },
        )
        .await;
        let mut s = setup(&ca, Scheme::Https, fe.port());
        let (file, content) = data_file(1000);

        s.cluster.allow_insecure_http = false;
        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 1000)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, UploadError::InsecureRedirect { location: l } if *l == location),
            "{err:?}"
        );
        assert!(!err.body_may_have_been_sent());
        assert_eq!(be.connections(), 0, "the plain BE was contacted");

        s.cluster.allow_insecure_http = true;
        let reply = load(&Uploader::new(&s.cluster).unwrap(), &file, 1000)
            .await
            .unwrap();
        assert_eq!(
            reply.verdict(),
            Verdict::Loaded {
                publish_pending: false
            }
        );
        let at_be = be.next_seen().await;
        assert_eq!(at_be.header("authorization"), Some(auth().as_str()));
        assert!(at_be.body == content);
    })
    .await;
}

#[tokio::test]
async fn the_body_follows_after_a_second_without_100_continue() {
    bounded(async {
        let ca = test_ca();
        let mut be = Server::start(Some(ca.server.clone()), be(false, AfterBody::Success)).await;
        let s = setup(&ca, Scheme::Https, be.port());
        let (file, content) = data_file(200_000);

        let reply = load(&Uploader::new(&s.cluster).unwrap(), &file, 200_000)
            .await
            .unwrap();
        assert_eq!(
            reply.verdict(),
            Verdict::Loaded {
                publish_pending: false
            }
        );

        let at_be = be.next_seen().await;
        let waited = at_be.first_body_byte_after.unwrap();
        assert!(
            waited >= Duration::from_millis(900),
            "body sent after {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "body sent after {waited:?}"
        );
        assert!(at_be.body == content);
    })
    .await;
}

#[tokio::test]
async fn a_401_before_the_body_is_delivered_and_no_body_is_sent() {
    bounded(async {
        let ca = test_ca();
        let mut fe = Server::start(Some(ca.server.clone()), Behaviour::Unauthorized).await;
        let s = setup(&ca, Scheme::Https, fe.port());
        let (file, _) = data_file(500_000);

        let started = Instant::now();
        let reply = load(&Uploader::new(&s.cluster).unwrap(), &file, 500_000)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_millis(900));
        assert_eq!(reply.http_status, 401);
        assert_eq!(
            reply.verdict(),
            Verdict::AuthRefused {
                message: "HTTP 401 FAILED: Access denied for loader@127.0.0.1".into()
            }
        );
        let at_fe = fe.next_seen().await;
        assert!(
            at_fe.body.is_empty(),
            "{} body bytes sent after the 401",
            at_fe.body.len()
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_is_refused_by_the_be_before_the_body() {
    bounded(async {
        let ca = test_ca();
        let mut be = Server::start(Some(ca.server.clone()), be(true, AfterBody::Success)).await;
        let mut s = setup(&ca, Scheme::Https, be.port());
        s.cluster.password = Secret::new("wrong");
        let (file, _) = data_file(10_000);

        let reply = load(&Uploader::new(&s.cluster).unwrap(), &file, 10_000)
            .await
            .unwrap();
        assert!(
            matches!(reply.verdict(), Verdict::AuthRefused { .. }),
            "{reply:?}"
        );
        assert!(be.next_seen().await.body.is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_answer_in_the_middle_of_the_body_is_delivered() {
    bounded(async {
        let ca = test_ca();
        let behaviour = Behaviour::AnswerMidBody { after: 256 * 1024 };
        let mut be = Server::start(Some(ca.server.clone()), behaviour).await;
        let s = setup(&ca, Scheme::Https, be.port());
        let len = 32 * 1024 * 1024;
        let (file, _) = data_file(len);

        let started = Instant::now();
        let reply = load(&Uploader::new(&s.cluster).unwrap(), &file, len as u64)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(reply.verdict(), Verdict::Rejected { .. }),
            "{reply:?}"
        );
        assert!(be.next_seen().await.body_len < len);
    })
    .await;
}

#[tokio::test]
async fn a_cut_after_the_body_leaves_the_outcome_unknown() {
    bounded(async {
        let ca = test_ca();
        let mut be = Server::start(Some(ca.server.clone()), be(true, AfterBody::Cut)).await;
        let s = setup(&ca, Scheme::Https, be.port());
        let (file, content) = data_file(100_000);

        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 100_000)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Exchange { .. }), "{err:?}");
        assert!(err.body_may_have_been_sent());
        assert!(be.next_seen().await.body == content);
    })
    .await;
}

#[tokio::test]
async fn a_silent_server_times_out_with_the_body_sent() {
    bounded(async {
        let ca = test_ca();
        let be = Server::start(Some(ca.server.clone()), be(true, AfterBody::Silent)).await;
        let mut s = setup(&ca, Scheme::Https, be.port());
        s.cluster.timeout = Duration::from_millis(1500);
        let (file, _) = data_file(10_000);

        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 10_000)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Timeout { .. }), "{err:?}");
        assert!(err.body_may_have_been_sent());
        assert_eq!(err.to_string(), "no answer within 1s 500ms");
    })
    .await;
}

#[tokio::test]
async fn a_refused_connection_sent_nothing() {
    bounded(async {
        let ca = test_ca();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let s = setup(&ca, Scheme::Https, port);
        let (file, _) = data_file(1000);

        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Connect { .. }), "{err:?}");
        assert!(!err.body_may_have_been_sent());
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to `127.0.0.1:{port}`: "))
        );
    })
    .await;
}

#[tokio::test]
async fn a_file_shorter_than_len_is_file_changed() {
    bounded(async {
        let ca = test_ca();
        let mut be = Server::start(Some(ca.server.clone()), be(true, AfterBody::Success)).await;
        let s = setup(&ca, Scheme::Https, be.port());
        let (file, content) = data_file(1_500_000);

        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 2_000_000)
            .await
            .unwrap_err();
        match err {
            UploadError::FileChanged { expected, read, .. } => {
                assert_eq!((expected, read), (2_000_000, 1_500_000));
            }
            other => panic!("expected FileChanged, got {other:?}"),
        }
        let at_be = be.next_seen().await;
        assert!(at_be.body.len() <= content.len());
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error() {
    bounded(async {
        let (ca, stranger) = (test_ca(), test_ca());
        let be = Server::start(Some(stranger.server.clone()), be(true, AfterBody::Success)).await;
        let s = setup(&ca, Scheme::Https, be.port());
        let (file, _) = data_file(1000);

        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, UploadError::Tls { .. }), "{err:?}");
        assert!(!err.body_may_have_been_sent());
    })
    .await;
}

#[tokio::test]
async fn endless_redirects_stop_after_five() {
    bounded(async {
        let ca = test_ca();
        let (file, _) = data_file(1000);
        let fe = Server::start(
            None,
            Behaviour::Redirect {
                location: "/api/sales/orders/_stream_load?again=1".into(),
            },
        )
        .await;
        let s = setup(&ca, Scheme::Http, fe.port());

        let err = load(&Uploader::new(&s.cluster).unwrap(), &file, 1000)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UploadError::TooManyRedirects { .. }),
            "{err:?}"
        );
        assert_eq!(fe.connections(), 6);
    })
    .await;
}

#[tokio::test]
async fn label_state_follows_the_leader_redirect_with_credentials() {
    bounded(async {
        let ca = test_ca();
        let mut leader = Server::start(
            Some(ca.server.clone()),
            Behaviour::LabelState {
                auth: auth(),
                state: "VISIBLE".into(),
            },
        )
        .await;
        let follower = Server::start(
            Some(ca.server.clone()),
            Behaviour::Redirect {
                location: format!(
                    "https://localhost:{}/api/sales/get_load_state?label={LABEL}",
                    leader.port()
                ),
            },
        )
        .await;
        let s = setup(&ca, Scheme::Https, follower.port());
        let uploader = Uploader::new(&s.cluster).unwrap();

        let state = uploader.label_state("sales", LABEL).await.unwrap();
        assert_eq!(state, LabelState::Visible);
        let at_leader = leader.next_seen().await;
        assert_eq!(at_leader.method, "GET");
        assert_eq!(
            at_leader.target,
            format!("/api/sales/get_load_state?label={LABEL}")
        );
        assert_eq!(at_leader.header("authorization"), Some(auth().as_str()));
    })
    .await;
}

#[tokio::test]
async fn error_rows_are_fetched_bounded_without_credentials() {
    bounded(async {
        let ca = test_ca();
        let rows = "Error: Value count does not match column count. Row: 1,2,3\n".repeat(200);
        let mut be = Server::start(
            Some(ca.server.clone()),
            Behaviour::Text { body: rows.clone() },
        )
        .await;
        let mut s = setup(&ca, Scheme::Https, 1);
        s.cluster
            .redirect_map
            .insert("10.0.0.12:8040".into(), format!("127.0.0.1:{}", be.port()));
        let uploader = Uploader::new(&s.cluster).unwrap();

        let url = "http://10.0.0.12:8040/api/_load_error_log?file=error_log_x";
        let text = uploader.fetch_error_rows(url, 100).await.unwrap();
        assert_eq!(text, rows[..100]);
        let at_be = be.next_seen().await;
        assert_eq!(at_be.target, "/api/_load_error_log?file=error_log_x");
        assert_eq!(at_be.header("authorization"), None);

        let unmapped = "http://10.0.0.13:8040/api/_load_error_log?file=y";
        let err = uploader.fetch_error_rows(unmapped, 100).await.unwrap_err();
        assert!(
            matches!(err, UploadError::InsecureErrorUrl { .. }),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_password_never_shows() {
    bounded(async {
        let ca = test_ca();
        let s = setup(&ca, Scheme::Https, 1);
        let uploader = Uploader::new(&s.cluster).unwrap();
        let token = auth();
        let debug = format!("{uploader:?}");
        assert!(
            !debug.contains(PASSWORD) && !debug.contains(&token[6..]),
            "{debug}"
        );

        let (file, _) = data_file(10);
        let err = load(&uploader, &file, 10).await.unwrap_err();
        for text in [format!("{err}"), format!("{err:?}")] {
            assert!(
                !text.contains(PASSWORD) && !text.contains(&token[6..]),
                "{text}"
            );
        }
    })
    .await;
}

/// Throughput of one load of a 2 GiB file (from the page cache) over loopback TLS. Run it in release:
/// `cargo test --release --test upload -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, run by hand in release"]
async fn throughput_of_a_2_gib_load_over_loopback_tls() {
    let ca = test_ca();
    let behaviour = Behaviour::Load {
        auth: auth(),
        send_continue: true,
        then: AfterBody::Success,
        keep_body: false,
    };
    let be = Server::start(Some(ca.server.clone()), behaviour).await;
    let mut s = setup(&ca, Scheme::Https, be.port());
    s.cluster.timeout = Duration::from_secs(120);
    let len: u64 = 2 << 30;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let block: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..len >> 20 {
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();

    let uploader = Uploader::new(&s.cluster).unwrap();
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let reply = load(&uploader, &file, len).await.unwrap();
    let elapsed = started.elapsed();
    let cpu = process_cpu_seconds() - cpu_before;
    assert_eq!(reply.load_bytes, len);
    let rate = len as f64 / elapsed.as_secs_f64() / f64::from(1u32 << 30);
    println!("2 GiB in {elapsed:?}: {rate:.2} GiB/s, {cpu:.2} CPU seconds (client and server)");
}

/// User and system time of this process so far, from `/proc/self/stat` (Linux, 100 Hz ticks).
fn process_cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
