//! The request body of a load: the claimed file, streamed from disk behind the Expect gate.
//!
//! The body yields nothing until the gate opens: on `100 Continue`, or after `CONTINUE_WAIT`
//! of silence (as curl does, for servers that never send 100). When a final answer comes first
//! the gate closes for good and no byte of the file is ever handed to hyper. Once open, a
//! blocking thread reads the file with `read_at` into a small bounded channel, so memory stays
//! flat whatever the file size and every hop can read again from offset 0.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc as std_mpsc};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

use crate::label::AlignedBuffer;

/// How long the body waits for `100 Continue` before it is sent anyway (curl waits 1 s).
pub(crate) const CONTINUE_WAIT: Duration = Duration::from_secs(1);

/// Bytes per read and per frame. Large enough to keep syscalls and frames few, small enough
/// that a chunk is still in the CPU cache when rustls encrypts it: on loopback TLS 256 KiB
/// loaded a 2 GiB file about a third faster than 1 MiB. With `CHANNEL_CHUNKS` read ahead and
/// hyper's own queue the body holds a few MiB at most, whatever the file size.
const CHUNK_BYTES: usize = 256 << 10;

/// Chunks read ahead of the connection.
const CHANNEL_CHUNKS: usize = 4;

const HOLD: u8 = 0;
const OPEN: u8 = 1;
const CLOSED: u8 = 2;

/// The Expect gate of one request, shared by the body, the `100 Continue` callback and the
/// exchange that sees the final answer. It moves once, from hold to open or to closed.
#[derive(Debug)]
pub(crate) struct Gate {
    state: AtomicU8,
    /// Wakes the body when `100 Continue` opens the gate; taken on first use.
    wake: Mutex<Option<oneshot::Sender<()>>>,
}

impl Gate {
    /// Open the gate on `100 Continue` and wake the body.
    pub(crate) fn on_continue(&self) {
        self.open();
        let sender = self
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }

    /// A final answer arrived. Returns true when the body had not been let through, and now
    /// never will be.
    pub(crate) fn close(&self) -> bool {
        match self
            .state
            .compare_exchange(HOLD, CLOSED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == CLOSED,
        }
    }

    /// Returns true when the gate is (now) open.
    fn open(&self) -> bool {
        match self
            .state
            .compare_exchange(HOLD, OPEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == OPEN,
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }
}

/// Why the body stopped before `len` bytes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyFailure {
    #[error("the file ended after {read} of {expected} bytes")]
    FileChanged { expected: u64, read: u64 },
    #[error("the bytes read differ from the digest")]
    Altered,
    #[error("reading the file failed: {0}")]
    Read(io::Error),
}

/// What the body reports to the exchange: whether any byte was handed over, and why it failed.
#[derive(Debug, Default)]
pub(crate) struct BodyReport {
    started: AtomicBool,
    failure: Mutex<Option<BodyFailure>>,
}

impl BodyReport {
    /// Whether a byte of the file was handed to the connection (and so may have been sent).
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Forget the previous hop: each hop reports on its own body.
    pub(crate) fn reset(&self) {
        self.started.store(false, Ordering::Release);
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The failure of the body, if it failed.
    pub(crate) fn take_failure(&self) -> Option<BodyFailure> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn fail(&self, failure: BodyFailure) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(failure);
    }
}

/// The hyper body of a load. Its size hint is exact, so hyper frames it with Content-Length.
pub(crate) struct FileBody {
    file: Arc<File>,
    len: u64,
    /// The digest the bytes must have, checked before the last chunk leaves.
    sha256: Option<String>,
    sent: u64,
    gate: Arc<Gate>,
    report: Arc<BodyReport>,
    phase: Phase,
}

enum Phase {
    /// Waiting for `100 Continue` (the receiver) or the end of `CONTINUE_WAIT` (the timer,
    /// started when hyper first asks for data, right after it flushed the head).
    Held {
        continued: Option<oneshot::Receiver<()>>,
        timer: Option<Pin<Box<Sleep>>>,
    },
    Streaming(mpsc::Receiver<Result<Bytes, BodyFailure>>),
    /// Closed before any byte, or failed: yields nothing more, ever.
    Stopped,
    Done,
}

impl FileBody {
    /// The body for `len` bytes of `file` from offset 0, and the gate that holds it back.
    pub(crate) fn new(
        file: Arc<File>,
        len: u64,
        sha256: Option<String>,
        report: Arc<BodyReport>,
    ) -> (FileBody, Arc<Gate>) {
        let (wake, continued) = oneshot::channel();
        let gate = Arc::new(Gate {
            state: AtomicU8::new(HOLD),
            wake: Mutex::new(Some(wake)),
        });
        let body = FileBody {
            file,
            len,
            sha256,
            sent: 0,
            gate: gate.clone(),
            report,
            phase: Phase::Held {
                continued: Some(continued),
                timer: None,
            },
        };
        (body, gate)
    }

    /// Poll the gate. Ready(true) once it is open, Ready(false) when it closed.
    fn poll_gate(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Phase::Held { continued, timer } = &mut self.phase else {
            return Poll::Ready(true);
        };
        // The receiver only registers the waker: `on_continue` moves the gate before it
        // sends, so the state below already tells what happened.
        if let Some(rx) = continued
            && Pin::new(rx).poll(cx).is_ready()
        {
            *continued = None;
        }
        match self.gate.state() {
            OPEN => return Poll::Ready(true),
            CLOSED => return Poll::Ready(false),
            _ => {}
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(CONTINUE_WAIT)));
        if timer.as_mut().poll(cx).is_ready() {
            tracing::trace!("no 100 continue within the wait, sending the body anyway");
            return Poll::Ready(self.gate.open());
        }
        Poll::Pending
    }

    fn start_reader(&mut self) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (file, len, sha256) = (self.file.clone(), self.len, self.sha256.clone());
        tokio::task::spawn_blocking(move || read_chunks(&file, len, sha256.as_deref(), &tx));
        self.phase = Phase::Streaming(rx);
    }

    /// Stop for good, keeping the reason for the exchange; hyper gets a plain abort.
    fn fail(&mut self, failure: BodyFailure) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        self.phase = Phase::Stopped;
        let aborted = BodyAborted(failure.to_string());
        self.report.fail(failure);
        Poll::Ready(Some(Err(aborted)))
    }
}

/// The error hyper sees when the body stops early; the exchange reads the real reason from
/// the `BodyReport`.
#[derive(Debug, thiserror::Error)]
#[error("body aborted: {0}")]
pub(crate) struct BodyAborted(String);

impl Body for FileBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        let this = self.get_mut();
        loop {
            match &mut this.phase {
                Phase::Held { .. } => match this.poll_gate(cx) {
                    Poll::Ready(true) => this.start_reader(),
                    Poll::Ready(false) => {
                        // A final answer came first. Stay pending: the exchange reads that
                        // answer and then drops the connection, and an error here could cut
                        // the answer short.
                        this.phase = Phase::Stopped;
                        return Poll::Pending;
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Streaming(rx) => {
                    return match rx.poll_recv(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Some(Ok(chunk))) => {
                            this.report.started.store(true, Ordering::Release);
                            this.sent += chunk.len() as u64;
                            if this.sent >= this.len {
                                this.phase = Phase::Done;
                            }
                            Poll::Ready(Some(Ok(Frame::data(chunk))))
                        }
                        Poll::Ready(Some(Err(failure))) => this.fail(failure),
                        Poll::Ready(None) => this.fail(BodyFailure::Read(io::Error::other(
                            "the file reader stopped early",
                        ))),
                    };
                }
                Phase::Stopped => return Poll::Pending,
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.len == 0 || matches!(self.phase, Phase::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// Read `len` bytes of `file` from offset 0 into `tx`, chunk by chunk; runs on a blocking
/// thread and stops early when the body is dropped (the channel closes).
///
/// Chunk buffers come back to a pool when hyper drops them, so each is allocated and zeroed
/// once per body instead of once per chunk (zeroing cost about half as much as the read).
fn read_chunks(
    file: &File,
    len: u64,
    sha256: Option<&str>,
    tx: &mpsc::Sender<Result<Bytes, BodyFailure>>,
) {
    use sha2::Digest as _;

    let mut hasher = sha256.map(|_| sha2::Sha256::new());
    let (home, pool) = std_mpsc::channel::<AlignedBuffer>();
    let mut offset = 0u64;
    while offset < len {
        // Bounded by CHUNK_BYTES, so the cast to usize cannot truncate.
        let want = (len - offset).min(CHUNK_BYTES as u64) as usize;
        let mut buf = pool
            .try_recv()
            .unwrap_or_else(|_| AlignedBuffer::new(CHUNK_BYTES));
        let mut filled = 0;
        while filled < want {
            match file.read_at(&mut buf.as_mut()[filled..want], offset + filled as u64) {
                Ok(0) => {
                    let read = offset + filled as u64;
                    let _ = tx.blocking_send(Err(BodyFailure::FileChanged {
                        expected: len,
                        read,
                    }));
                    return;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(BodyFailure::Read(e)));
                    return;
                }
            }
        }
        offset += want as u64;
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&buf.as_slice()[..want]);
        }
        if offset >= len
            && let (Some(hasher), Some(expected)) = (hasher.take(), sha256)
            && crate::label::hex(&hasher.finalize()) != expected
        {
            // Withhold the last chunk: the server sees a short body and commits nothing.
            let _ = tx.blocking_send(Err(BodyFailure::Altered));
            return;
        }
        let chunk = Bytes::from_owner(PooledChunk {
            buf: Some(buf),
            len: want,
            home: home.clone(),
        });
        if tx.blocking_send(Ok(chunk)).is_err() {
            return;
        }
    }
}

/// A chunk buffer that returns to its reader's pool when the last `Bytes` of it is dropped.
struct PooledChunk {
    /// Always `Some` until the chunk is dropped and the buffer goes home.
    buf: Option<AlignedBuffer>,
    len: usize,
    home: std_mpsc::Sender<AlignedBuffer>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        self.buf
            .as_ref()
            .map_or(&[], |buf| &buf.as_slice()[..self.len])
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        // The reader may be gone (body finished or dropped); the buffer is then just freed.
        if let Some(buf) = self.buf.take() {
            let _ = self.home.send(buf);
        }
    }
}
