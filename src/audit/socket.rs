//! The audit socket: read-only ledger queries answered by the process that holds the store.
//!
//! sled lets one process open a ledger, so while `sluice run` holds it the ledger commands
//! connect to `<ledger>/audit.sock` instead. A connection carries one [`Query`] as a JSON line;
//! the answer comes back as frames (a tag byte, a big-endian u32 length, the payload): `o`
//! output bytes, `e` an error message, `x` the final status byte. Each query runs in a blocking
//! thread on the service's own `Ledger` handle (sled reads never wait for loads), at most
//! [`MAX_QUERIES`] at once. The socket is mode 0660: the service's user and group may ask.

use std::future::Future;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{AuditError, Query, Verdict, answer};
use crate::ledger::Ledger;

/// The socket's file name inside the ledger directory.
pub const SOCKET_NAME: &str = "audit.sock";

/// Queries answered at once; more are refused with "busy" so audits never crowd out loads.
const MAX_QUERIES: usize = 2;
/// Longest request line.
const MAX_REQUEST: u64 = 64 * 1024;
/// Output bytes gathered into one frame.
const FRAME_BYTES: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A reader that stops reading for this long loses its answer (and frees its thread).
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping service waits for queries still running.
const STOP_GRACE: Duration = Duration::from_secs(5);

const TAG_OUTPUT: u8 = b'o';
const TAG_ERROR: u8 = b'e';
const TAG_EXIT: u8 = b'x';
const EXIT_DONE: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_BROKEN: u8 = 5;

/// The audit socket of a running service. Stops (and removes its file) with [`stop`](Self::stop).
pub struct AuditServer {
    /// Ends `serve`; `None` once sent.
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AuditServer {
    /// Starts serving `ledger` on `<ledger_dir>/audit.sock` in the background. Never fails: a
    /// socket that cannot be made is logged, and the service loads without it.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn(ledger: Ledger, ledger_dir: &Path) -> AuditServer {
        let socket = ledger_dir.join(SOCKET_NAME);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(err) = serve(ledger, &socket, async {
                let _ = rx.await;
            })
            .await
            {
                warn!(path = %socket.display(), error = %err,
                    "audit socket unavailable: ledger commands must wait until this process stops");
            }
        });
        AuditServer {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops taking queries, lets running ones end (within a few seconds), removes the socket.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AuditServer {
    /// A server dropped without `stop` (an early error return) still ends and removes its
    /// socket, in the background.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves read-only queries on `socket` until `shutdown` completes, then removes the socket.
/// Queries still running at shutdown are told to stop and get five seconds to end.
///
/// # Errors
///
/// The socket cannot be created (path too long for a Unix socket, folder not writable).
pub async fn serve(
    ledger: Ledger,
    socket: &Path,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let listener = bind(socket)?;
    match ledger.chain_head() {
        Ok(Some(head)) => info!(path = %socket.display(), chain_seq = head.seq,
            chain_hash = %head.hash, "audit socket listening"),
        _ => info!(path = %socket.display(), "audit socket listening"),
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let slots = Arc::new(Semaphore::new(MAX_QUERIES));
    let mut queries = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted.and_then(|(s, _)| s.into_std()) {
                    Ok(stream) => stream,
                    Err(err) => {
                        debug!(error = %err, "audit connection failed");
                        continue;
                    }
                };
                let permit = Arc::clone(&slots).try_acquire_owned().ok();
                let ledger = ledger.clone();
                let stopping = Arc::clone(&stopping);
                queries.spawn_blocking(move || {
                    let _permit = permit.as_ref();
                    handle(&ledger, stream, permit.is_some(), &stopping);
                });
            }
            Some(_) = queries.join_next(), if !queries.is_empty() => {}
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(socket);
    stopping.store(true, Ordering::SeqCst);
    let drained = tokio::time::timeout(STOP_GRACE, async {
        while queries.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            running = queries.len(),
            "audit queries still running at stop"
        );
    }
    if let Ok(Some(head)) = ledger.chain_head() {
        info!(chain_seq = head.seq, chain_hash = %head.hash, "audit socket closed");
    }
    Ok(())
}

/// Binds under a temporary name, sets the mode, then renames into place, so that the socket
/// is never reachable with looser permissions and a stale one is replaced atomically.
fn bind(socket: &Path) -> io::Result<UnixListener> {
    let temp = socket.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| std::fs::rename(&temp, socket));
    if let Err(err) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(err);
    }
    Ok(listener)
}

/// Answers one connection (in a blocking thread).
fn handle(ledger: &Ledger, stream: UnixStream, has_slot: bool, stopping: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut frames = FrameWriter {
        stream,
        buf: Vec::with_capacity(FRAME_BYTES),
        stopping,
    };
    if !has_slot {
        frames.finish(&Err(AuditError::Service(
            "the service is answering other audit queries; try again in a moment".into(),
        )));
        return;
    }
    let mut line = String::new();
    let read = BufReader::new(reader.take(MAX_REQUEST)).read_line(&mut line);
    let query = match read {
        Ok(_) => serde_json::from_str::<Query>(&line)
            .map_err(|err| AuditError::Service(format!("bad audit query: {err}"))),
        Err(err) => Err(AuditError::Service(format!(
            "failed to read audit query: {err}"
        ))),
    };
    debug!(query = line.trim_end(), "audit query");
    let result = query.and_then(|query| answer(ledger, &query, &mut frames));
    frames.finish(&result);
}

/// Wraps output into `o` frames; refuses to write once the service is stopping.
struct FrameWriter<'a> {
    stream: UnixStream,
    buf: Vec<u8>,
    stopping: &'a AtomicBool,
}

impl FrameWriter<'_> {
    fn send(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        // Frames are at most FRAME_BYTES or an error message, far below u32::MAX.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&head)?;
        self.stream.write_all(payload)
    }

    fn finish(mut self, result: &Result<Verdict, AuditError>) {
        let status = match result {
            Ok(Verdict::Done) => EXIT_DONE,
            Ok(Verdict::Broken) => EXIT_BROKEN,
            Err(err) => {
                let _ = self.flush_output();
                let _ = self.send(TAG_ERROR, err.to_string().as_bytes());
                EXIT_FAILED
            }
        };
        if self.flush_output().is_ok() {
            let _ = self.send(TAG_EXIT, &[status]);
        }
    }

    fn flush_output(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let sent = self.send(TAG_OUTPUT, &buf);
        self.buf = buf;
        self.buf.clear();
        sent
    }
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "the service is stopping; run the command again",
            ));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FRAME_BYTES {
            self.flush_output()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_output()
    }
}

/// Sends `query` to the service behind `socket` and copies its answer onto `out`.
///
/// # Errors
///
/// The connection failed or broke, or the service answered with an error (`Service`).
pub(super) fn ask(
    socket: &Path,
    stream: UnixStream,
    query: &Query,
    out: &mut dyn Write,
) -> Result<Verdict, AuditError> {
    let broken = |err: io::Error| {
        AuditError::Service(format!(
            "the audit socket `{}` failed: {err}",
            socket.display()
        ))
    };
    let mut request = serde_json::to_vec(query).map_err(|err| broken(err.into()))?;
    request.push(b'\n');
    (&stream).write_all(&request).map_err(broken)?;
    let mut reader = BufReader::with_capacity(FRAME_BYTES + 5, &stream);
    let mut error = None;
    loop {
        let mut head = [0u8; 5];
        if let Err(err) = reader.read_exact(&mut head) {
            return Err(match err.kind() {
                io::ErrorKind::UnexpectedEof => broken(io::Error::other(
                    "the service closed the connection before the end of its answer",
                )),
                _ => broken(err),
            });
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let mut payload = vec![0u8; len as usize];
        reader.read_exact(&mut payload).map_err(broken)?;
        match head[0] {
            TAG_OUTPUT => out.write_all(&payload)?,
            TAG_ERROR => error = Some(String::from_utf8_lossy(&payload).into_owned()),
            TAG_EXIT => {
                return match (payload.first(), error) {
                    (Some(&EXIT_DONE), _) => Ok(Verdict::Done),
                    (Some(&EXIT_BROKEN), _) => Ok(Verdict::Broken),
                    (_, Some(message)) => Err(AuditError::Service(message)),
                    (_, None) => Err(AuditError::Service("the service failed the query".into())),
                };
            }
            other => {
                return Err(broken(io::Error::other(format!(
                    "unknown frame tag {other}"
                ))));
            }
        }
    }
}

/// The socket path of the ledger at `ledger_dir`.
pub(super) fn socket_path(ledger_dir: &Path) -> PathBuf {
    ledger_dir.join(SOCKET_NAME)
}
