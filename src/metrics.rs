//! Metrics in the Prometheus text format (0.0.4): rendered from a service `Snapshot`, served
//! over HTTP on a loopback address for `sluice run`, or written to a file for `sluice once`.
//!
//! Counters count what this process did since it started; the ledger's record count is the
//! only all-time figure. The HTTP side is hyper's HTTP/1 server with small limits (one request
//! per connection, 8 KiB of request head, 5 s to send it, 16 connections at once), because the
//! only client is a scraper on the same host.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::service::Snapshot;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;

/// Smallest buffer hyper accepts; a scrape's request head is a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8192;

/// Time a client has to send its request head, and to take the whole answer.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);

/// How a `once` run ended, for the extra gauges of `--metrics-file`.
#[derive(Debug, Clone, Copy)]
pub struct OnceRun {
    /// The process exit status the run reports.
    pub exit_code: u8,
    pub elapsed: Duration,
}

/// The metrics of `snapshot` as of `now`, in the text format.
pub fn render(snapshot: &Snapshot, now: SystemTime) -> String {
    let mut out = Families::default();
    let summary = &snapshot.summary;

    out.family(
        "sluice_files_total",
        "counter",
        "Files that reached an outcome in this process, by outcome.",
    );
    for (outcome, value) in [
        ("loaded", summary.loaded),
        ("duplicate", summary.duplicate),
        ("rejected", summary.rejected),
        ("retrying", summary.retrying),
        ("indeterminate", summary.indeterminate),
        ("skipped", summary.skipped),
        ("local_error", summary.local_errors),
    ] {
        out.sample("sluice_files_total", &[("outcome", outcome)], value as f64);
    }
    out.single(
        "sluice_files_digested_total",
        "counter",
        "Files read through SHA-256 in this process.",
        summary.digested as f64,
    );
    out.single(
        "sluice_loaded_bytes_total",
        "counter",
        "Bytes of the files loaded in this process.",
        summary.bytes as f64,
    );
    out.single(
        "sluice_loaded_rows_total",
        "counter",
        "Rows the cluster reported loaded in this process.",
        summary.rows as f64,
    );

    out.family(
        "sluice_attempts_total",
        "counter",
        "Stream Load attempts in this process, by how they ended.",
    );
    for (outcome, value) in &snapshot.attempts {
        out.sample(
            "sluice_attempts_total",
            &[("outcome", outcome.as_str())],
            *value as f64,
        );
    }

    out.single(
        "sluice_loads_in_flight",
        "gauge",
        "Stream Load requests running now.",
        snapshot.loads_in_flight as f64,
    );
    out.single(
        "sluice_files_waiting",
        "gauge",
        "Files taken and not yet at an outcome: digesting, waiting for a slot, loading, retrying.",
        snapshot.files_waiting as f64,
    );
    let oldest_age = snapshot.oldest_waiting_since.map_or(0.0, |since| {
        seconds(now.duration_since(since).unwrap_or_default())
    });
    out.single(
        "sluice_oldest_waiting_file_age_seconds",
        "gauge",
        "How long the oldest waiting file has been taken; 0 when none waits.",
        oldest_age,
    );
    out.family(
        "sluice_last_success_timestamp_seconds",
        "gauge",
        "When this process last loaded a file (Unix time); absent until it has.",
    );
    if let Some(last) = snapshot.last_success {
        out.sample(
            "sluice_last_success_timestamp_seconds",
            &[],
            unix_seconds(last),
        );
    }
    out.single(
        "sluice_ledger_records",
        "gauge",
        "File records in the ledger, all time.",
        snapshot.ledger_records as f64,
    );
    out.family(
        "sluice_build_info",
        "gauge",
        "Always 1; the version is in the label.",
    );
    out.sample(
        "sluice_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    out.0
}

/// [`render`] plus the gauges of a finished `once` run: its exit code, duration and end time.
pub fn render_once(snapshot: &Snapshot, now: SystemTime, run: OnceRun) -> String {
    let mut out = Families(render(snapshot, now));
    out.single(
        "sluice_once_exit_code",
        "gauge",
        "Exit status of the last `sluice once`: 0 clean, 3 rejected, 4 unfinished.",
        f64::from(run.exit_code),
    );
    out.single(
        "sluice_once_duration_seconds",
        "gauge",
        "How long the last `sluice once` took.",
        seconds(run.elapsed),
    );
    out.single(
        "sluice_once_finished_timestamp_seconds",
        "gauge",
        "When the last `sluice once` finished (Unix time).",
        unix_seconds(now),
    );
    out.0
}

/// Writes `text` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over `path`, so that a reader (the node exporter's textfile collector) never sees
/// half a file. The file is made readable by everyone (0644): metrics hold no secret, and the
/// exporter usually runs as another user.
///
/// # Errors
///
/// The folder cannot be written, or the disk is full.
pub fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // The temporary name starts with a dot and does not end in `.prom`, so the collector
    // skips it.
    let mut file = tempfile::Builder::new()
        .prefix(".sluice-metrics")
        .tempfile_in(dir)?;
    file.write_all(text.as_bytes())?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|err| err.error)?;
    // Make the rename itself durable; a folder that cannot be opened for that is no reason
    // to fail the run.
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Serves `GET /metrics` on `listener` with the text `render` makes, until `stop` completes.
///
/// Each connection carries one request (no keep-alive) and is bounded in time and size; past
/// 16 at once, new connections are closed unanswered. Cancel-safe: dropping
/// the future stops accepting; connections being answered finish on their own tasks.
pub async fn serve<R>(listener: TcpListener, render: R, stop: impl Future<Output = ()>)
where
    R: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(address) = listener.local_addr() {
        info!(address = %address, "serving metrics at /metrics");
    }
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    warn!(error = %err, "metrics listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(peer = %peer, "too many metrics connections; closed");
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let render = Arc::clone(&render);
                async move { Ok::<_, std::convert::Infallible>(answer(&request, &*render)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_REQUEST_HEAD)
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => debug!(peer = %peer, error = %err, "metrics connection failed"),
                Err(_) => debug!(peer = %peer, "metrics connection timed out"),
            }
            drop(slot);
        });
    }
}

/// Binds the metrics listener.
///
/// # Errors
///
/// The address is in use or not ours.
pub async fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(address).await
}

fn answer(request: &Request<Incoming>, render: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render()),
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "sluice serves its metrics at /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// The text being built, family by family.
#[derive(Default)]
struct Families(String);

impl Families {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (index, (key, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape_label(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, seconds)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::service::Summary;

    fn snapshot() -> Snapshot {
        Snapshot {
            summary: Summary {
                loaded: 3,
                duplicate: 1,
                rejected: 1,
                rows: 1516,
                bytes: 40_960,
                digested: 5,
                ..Summary::default()
            },
            loads_in_flight: 2,
            files_waiting: 4,
            oldest_waiting_since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)),
            attempts: BTreeMap::from([
                ("loaded".to_owned(), 3),
                ("transient".to_owned(), 2),
                ("odd\"one".to_owned(), 1),
            ]),
            last_success: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_050_500)),
            ledger_records: 12,
            ..Snapshot::default()
        }
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_060);
        let text = render(&snapshot(), now);

        for line in [
            "# TYPE sluice_files_total counter",
            "sluice_files_total{outcome=\"loaded\"} 3",
            "sluice_files_total{outcome=\"duplicate\"} 1",
            "sluice_files_total{outcome=\"rejected\"} 1",
            "sluice_files_total{outcome=\"local_error\"} 0",
            "sluice_loaded_bytes_total 40960",
            "sluice_loaded_rows_total 1516",
            "sluice_attempts_total{outcome=\"transient\"} 2",
            "sluice_attempts_total{outcome=\"odd\\\"one\"} 1",
            "sluice_loads_in_flight 2",
            "sluice_files_waiting 4",
            "sluice_oldest_waiting_file_age_seconds 60",
            "sluice_last_success_timestamp_seconds 1050.5",
            "sluice_ledger_records 12",
            "# TYPE sluice_ledger_records gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(text.contains(&format!(
            "sluice_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn a_process_that_loaded_nothing_has_no_last_success_sample() {
        let text = render(&Snapshot::default(), SystemTime::now());
        assert!(text.contains("# TYPE sluice_last_success_timestamp_seconds gauge"));
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("sluice_last_success_timestamp_seconds "))
        );
        assert!(text.contains("sluice_oldest_waiting_file_age_seconds 0\n"));
    }

    #[test]
    fn a_once_run_adds_its_exit_code_and_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000);
        let run = OnceRun {
            exit_code: 4,
            elapsed: Duration::from_millis(1_500),
        };
        let text = render_once(&Snapshot::default(), now, run);
        assert!(text.contains("sluice_once_exit_code 4\n"));
        assert!(text.contains("sluice_once_duration_seconds 1.5\n"));
        assert!(text.contains("sluice_once_finished_timestamp_seconds 2000\n"));
    }

    #[test]
    fn writes_the_file_whole_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.prom");
        std::fs::write(&path, "old\n").unwrap();
        write_file(&path, "new text\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new text\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }

    async fn http_get(address: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_other_paths_and_methods() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, || "sluice_up 1\n".to_owned(), async {
            let _ = stop_rx.await;
        }));

        let ok = http_get(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("\r\n\r\nsluice_up 1\n"), "{ok}");

        let missing = http_get(address, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = http_get(
            address,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");

        // A request head past the limit is refused, not buffered.
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let _ = stream.write_all(huge.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("sluice_up"), "{answer}");

        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }
}
