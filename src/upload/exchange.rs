//! One hop of a load: a fresh connection, the PUT with `Expect: 100-continue`, the answer.
//!
//! hyper's `client::conn::http1` is driven here directly, without a pool and without its own
//! redirect handling: each hop gets a new connection (TCP, then TLS for https) that is dropped
//! once the answer is read. Dropping it matters when the answer came before the body (the FE's
//! 307, a 401): the server may keep the socket open and hyper would wait for the body it was
//! promised. The body itself waits behind the gate in `body.rs`.

use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use reqwest::Url;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::body::{BodyFailure, BodyReport, FileBody, Gate};
use super::redirect::is_redirect;
use super::{LoadRequest, UploadError, error_chain};
use crate::tls;

/// Most bytes of an answer kept; a BE's load reply is about a kilobyte.
pub(crate) const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Headers sluice sets itself; the same names among the caller's headers are ignored, so a
/// `[watch.headers]` entry can neither drop the credentials nor break the framing or the gate.
const RESERVED: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "expect",
    "host",
    "label",
    "transfer-encoding",
];

/// A final answer of one hop.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) location: Option<String>,
    /// Empty for redirects (never read), else at most `MAX_REPLY_BYTES` of the body.
    pub(crate) body: String,
}

/// Everything one hop needs.
pub(crate) struct Hop<'a> {
    pub(crate) url: &'a Url,
    pub(crate) tls: &'a TlsConnector,
    /// `Basic ...`, marked sensitive so hyper and `Debug` never show it.
    pub(crate) authorization: &'a HeaderValue,
    pub(crate) request: &'a LoadRequest<'a>,
    /// Reset by the caller before each hop; tells whether the body started and why it failed.
    pub(crate) report: Arc<BodyReport>,
}

/// Send the load to `hop.url` over a fresh connection and return its final answer.
///
/// Cancel-safe: dropping the future drops the connection and stops the file reader.
pub(crate) async fn put(hop: Hop<'_>) -> Result<Answer, UploadError> {
    let addr = authority(hop.url);
    let (request, gate) = build_request(&hop)?;
    let stream = connect(hop.url, &addr, hop.tls).await?;

    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failure(&addr, &hop.report, &e))?;
    let mut conn = pin!(conn);
    let mut conn_done = false;

    tracing::trace!(url = %hop.url, label = hop.request.label, "load request sent");
    let response = drive(conn.as_mut(), &mut conn_done, sender.send_request(request))
        .await
        .map_err(|e| failure(&addr, &hop.report, &e))?;

    // From here the body never starts if it has not yet: the answer is final.
    let before_body = gate.close();
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    tracing::trace!(url = %hop.url, status, before_body, "answer received");

    if is_redirect(status) {
        return Ok(Answer {
            status,
            location,
            body: String::new(),
        });
    }
    let body = drive(
        conn.as_mut(),
        &mut conn_done,
        read_bounded(response.into_body()),
    )
    .await
    .map_err(|e| failure(&addr, &hop.report, &e))?;
    Ok(Answer {
        status,
        location,
        body,
    })
}

fn build_request(hop: &Hop<'_>) -> Result<(Request<FileBody>, Arc<Gate>), UploadError> {
    let req = hop.request;
    let mut target = hop.url.path().to_owned();
    if let Some(query) = hop.url.query() {
        target.push('?');
        target.push_str(query);
    }

    let expected = req.sha256.map(str::to_owned);
    let (body, gate) = FileBody::new(req.file.clone(), req.len, expected, hop.report.clone());
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri(target.as_str())
        .version(Version::HTTP_11)
        .body(body)
        .map_err(|e| UploadError::InvalidUrl {
            url: hop.url.to_string(),
            reason: e.to_string(),
        })?;

    let headers = request.headers_mut();
    headers.insert(
        header::HOST,
        header_value("host", &authority_header(hop.url))?,
    );
    headers.insert(
        HeaderName::from_static("label"),
        header_value("label", req.label)?,
    );
    for (name, value) in req.headers {
        if RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            tracing::debug!(header = %name, "request header ignored: sluice sets it itself");
            continue;
        }
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| UploadError::InvalidHeader { name: name.clone() })?;
        headers.append(header_name, header_value(name, value)?);
    }
    headers.insert(header::AUTHORIZATION, hop.authorization.clone());
    headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(req.len));

    let continue_gate = gate.clone();
    hyper::ext::on_informational(&mut request, move |res| {
        if res.status() == http::StatusCode::CONTINUE {
            tracing::trace!("100 continue received");
            continue_gate.on_continue();
        }
    });
    Ok((request, gate))
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, UploadError> {
    HeaderValue::from_str(value).map_err(|_| UploadError::InvalidHeader {
        name: name.to_owned(),
    })
}

pub(crate) async fn connect(
    url: &Url,
    addr: &str,
    tls: &TlsConnector,
) -> Result<Stream, UploadError> {
    let host = url.host_str().unwrap_or_default();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = url.port_or_known_default().unwrap_or(80);

    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|cause| UploadError::Connect {
            addr: addr.to_owned(),
            cause,
        })?;
    // The head and the small JSON answers should not wait for Nagle.
    let _ = tcp.set_nodelay(true);

    if url.scheme() != "https" {
        return Ok(Stream::Plain(tcp));
    }
    let name = tls::server_name(host)?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|cause| UploadError::Tls {
            addr: addr.to_owned(),
            cause,
        })?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// Await `fut` while driving the connection it depends on. Once the connection has ended
/// (`conn_done`), `fut` is awaited alone: hyper then resolves it, with an error if need be.
pub(crate) async fn drive<C, F>(mut conn: Pin<&mut C>, conn_done: &mut bool, fut: F) -> F::Output
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: Future,
{
    let mut fut = pin!(fut);
    loop {
        if *conn_done {
            return fut.await;
        }
        tokio::select! {
            out = &mut fut => return out,
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::trace!(error = %error_chain(&e), "connection ended");
                }
                *conn_done = true;
            }
        }
    }
}

/// At most `MAX_REPLY_BYTES` of a body, as text; the rest is left unread.
async fn read_bounded(mut body: Incoming) -> Result<String, hyper::Error> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = MAX_REPLY_BYTES - buf.len();
            buf.extend_from_slice(&data[..data.len().min(room)]);
            if buf.len() >= MAX_REPLY_BYTES {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The error of a hop that ended without a final answer: the body's own failure when it had
/// one (the file), else the connection's.
fn failure(addr: &str, report: &BodyReport, err: &hyper::Error) -> UploadError {
    let body_may_have_been_sent = report.started();
    match report.take_failure() {
        Some(BodyFailure::FileChanged { expected, read }) => UploadError::FileChanged {
            expected,
            read,
            body_may_have_been_sent,
        },
        Some(BodyFailure::Altered) => UploadError::FileAltered {
            body_may_have_been_sent,
        },
        Some(BodyFailure::Read(cause)) => UploadError::ReadFile {
            cause,
            body_may_have_been_sent,
        },
        None => UploadError::Exchange {
            addr: addr.to_owned(),
            body_may_have_been_sent,
            // With TLS 1.3 the server refuses a client certificate after the client thinks the
            // handshake is done: the refusal arrives here, and deserves the same words.
            cause: match tls::find_handshake_failure(err) {
                Some(failure) => format!("{failure}; {}", failure.fix()),
                None => error_chain(err),
            },
        },
    }
}

/// `host:port` of a URL, for messages.
pub(crate) fn authority(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// The Host header: the port only when it is not the scheme's default.
fn authority_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// A plain or TLS connection, one type for hyper.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
