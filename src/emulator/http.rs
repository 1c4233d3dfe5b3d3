//! Just enough HTTP/1.1 for Stream Load, written by hand so the emulator decides exactly when
//! `100 Continue` goes out, when the body is read (or never), and when a connection closes
//! without an answer.
//!
//! Bodies are streamed out of the connection's read buffer into a callback; nothing holds a
//! whole body.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Request line plus headers may not exceed this (the FE's limits are 4 KiB + 32 KiB).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// After a refusal, read and drop at most this much of a body already on its way, so that the
/// answer is not lost to a TCP reset.
const LINGER_BYTES: u64 = 64 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A byte stream the emulator serves: TCP or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection with its read buffer.
pub(crate) type Conn<S> = BufReader<S>;

/// A request head.
#[derive(Debug)]
pub(crate) struct Request {
    /// Lower-case names, values as sent (lossy UTF-8).
    headers: Vec<(String, String)>,
    pub(crate) method: String,
    /// HTTP/1.x minor version.
    pub(crate) minor: u8,
    pub(crate) path: String,
    pub(crate) query: String,
    /// The request target as sent: path and query.
    pub(crate) target: String,
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Chunked,
    Length(u64),
}

/// Why a body could not be read to its end.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The peer closed before the body was complete; so many bytes had arrived.
    Truncated(u64),
    Malformed,
    Io(io::Error),
}

/// Why a request head could not be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    Malformed,
    Io(io::Error),
}

impl Request {
    /// The first value of a header, by case-insensitive name.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header that is present and not empty (the BE treats empty as absent).
    pub(crate) fn nonempty_header(&self, name: &str) -> Option<&str> {
        self.header(name).filter(|v| !v.is_empty())
    }

    /// A percent-decoded query parameter.
    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key) == name).then(|| percent_decode(value))
        })
    }

    /// Whether the client asked for `100 Continue`.
    pub(crate) fn expects_continue(&self) -> bool {
        self.minor >= 1
            && self
                .header("expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }

    /// Whether the connection must close after this exchange.
    pub(crate) fn wants_close(&self) -> bool {
        let connection = self.header("connection").unwrap_or("");
        let has = |token: &str| {
            connection
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        if self.minor == 0 {
            !has("keep-alive")
        } else {
            has("close")
        }
    }

    /// The body's framing; a request with neither Content-Length nor chunked encoding has an
    /// empty body (RFC 9112 §6.3).
    pub(crate) fn framing(&self) -> Result<Framing, HeadError> {
        if let Some(te) = self.header("transfer-encoding") {
            if te
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            {
                return Ok(Framing::Chunked);
            }
            return Err(HeadError::Malformed);
        }
        match self.header("content-length") {
            None => Ok(Framing::Length(0)),
            Some(v) => v
                .trim()
                .parse()
                .map(Framing::Length)
                .map_err(|_| HeadError::Malformed),
        }
    }
}

/// The user and password of a `Basic` Authorization header, if it has a valid one.
pub(crate) fn basic_auth(req: &Request) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = req.header("authorization")?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Reads a request head; `Ok(None)` when the peer closed cleanly between requests.
pub(crate) async fn read_head<S: Io>(conn: &mut Conn<S>) -> Result<Option<Request>, HeadError> {
    let mut head: Vec<u8> = Vec::new();
    loop {
        let available = conn.fill_buf().await.map_err(HeadError::Io)?;
        if available.is_empty() {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(HeadError::Malformed)
            };
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(available);
        let taken = available.len();
        if let Some(pos) = memchr::memmem::find(&head[searched_from..], b"\r\n\r\n") {
            let end = searched_from + pos + 4;
            conn.consume(taken - (head.len() - end));
            head.truncate(end);
            break;
        }
        conn.consume(taken);
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::Malformed);
        }
    }
    parse_head(&head).map(Some)
}

fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(HeadError::Malformed),
    };
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        headers,
        method: method.to_string(),
        minor,
        path: path.to_string(),
        query: query.to_string(),
        target: target.to_string(),
    })
}

/// A response to write.
pub(crate) struct Response {
    pub(crate) body: Vec<u8>,
    /// Adds `Connection: close`.
    pub(crate) close: bool,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) status: u16,
}

impl Response {
    pub(crate) fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            body: body.into(),
            close: false,
            headers: vec![("Content-Type", content_type.to_string())],
            status,
        }
    }

    pub(crate) fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json; charset=utf-8", body)
    }

    pub(crate) fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub(crate) fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

pub(crate) async fn write_response<S: Io>(
    conn: &mut Conn<S>,
    response: &Response,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if response.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let io = conn.get_mut();
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    io.write_all(&bytes).await?;
    io.flush().await
}

pub(crate) async fn write_continue<S: Io>(conn: &mut Conn<S>) -> io::Result<()> {
    let io = conn.get_mut();
    io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    io.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Streams the body into `sink` chunk by chunk; returns the body's length.
pub(crate) async fn read_body<S: Io>(
    conn: &mut Conn<S>,
    framing: Framing,
    mut sink: impl FnMut(&[u8]),
) -> Result<u64, BodyError> {
    match framing {
        Framing::Length(length) => read_exact_into(conn, length, 0, &mut sink).await,
        Framing::Chunked => {
            let mut received = 0;
            loop {
                let size = read_chunk_size(conn, received).await?;
                if size == 0 {
                    skip_trailers(conn, received).await?;
                    return Ok(received);
                }
                received = read_exact_into(conn, size, received, &mut sink).await?;
                let mut crlf = [0u8; 2];
                conn.read_exact(&mut crlf)
                    .await
                    .map_err(|e| eof_as_truncated(e, received))?;
                if &crlf != b"\r\n" {
                    return Err(BodyError::Malformed);
                }
            }
        }
    }
}

/// Passes `length` bytes to `sink`; `received` is the running total for error reports.
async fn read_exact_into<S: Io>(
    conn: &mut Conn<S>,
    length: u64,
    mut received: u64,
    sink: &mut impl FnMut(&[u8]),
) -> Result<u64, BodyError> {
    let mut left = length;
    while left > 0 {
        let available = conn.fill_buf().await.map_err(BodyError::Io)?;
        if available.is_empty() {
            return Err(BodyError::Truncated(received));
        }
        let take = available
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        sink(&available[..take]);
        conn.consume(take);
        left -= take as u64;
        received += take as u64;
    }
    Ok(received)
}

async fn read_chunk_size<S: Io>(conn: &mut Conn<S>, received: u64) -> Result<u64, BodyError> {
    let line = read_line(conn, received).await?;
    let digits = line.split(';').next().unwrap_or("").trim();
    u64::from_str_radix(digits, 16).map_err(|_| BodyError::Malformed)
}

async fn skip_trailers<S: Io>(conn: &mut Conn<S>, received: u64) -> Result<(), BodyError> {
    while !read_line(conn, received).await?.is_empty() {}
    Ok(())
}

async fn read_line<S: Io>(conn: &mut Conn<S>, received: u64) -> Result<String, BodyError> {
    let mut line = Vec::new();
    let mut limited = (&mut *conn).take(4096);
    limited
        .read_until(b'\n', &mut line)
        .await
        .map_err(BodyError::Io)?;
    if !line.ends_with(b"\n") {
        return Err(if line.len() < 4096 {
            BodyError::Truncated(received)
        } else {
            BodyError::Malformed
        });
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

fn eof_as_truncated(err: io::Error, received: u64) -> BodyError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        BodyError::Truncated(received)
    } else {
        BodyError::Io(err)
    }
}

/// Closes after a refusal: ends our side, then reads and drops what the client may still be
/// sending for a short while, so that our answer is not destroyed by a reset.
pub(crate) async fn linger_close<S: Io>(conn: &mut Conn<S>) {
    if conn.get_mut().shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut (&mut *conn).take(LINGER_BYTES), &mut sink).await;
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// Ends the connection at once, without an answer (our side closes cleanly).
pub(crate) async fn close_now<S: Io>(conn: &mut Conn<S>) {
    let _ = conn.get_mut().shutdown().await;
}

/// Decodes `%XX` escapes (and `+` as a space, as in query strings); bad escapes stay as written.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| {
                s.get(i + 1..i + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            })
            .flatten();
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, byte) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_head() {
        let req = parse_head(
            b"PUT /api/db/t/_stream_load?x=1 HTTP/1.1\r\nExpect: 100-continue\r\nLabel: a\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("PUT", "/api/db/t/_stream_load")
        );
        assert_eq!(req.query_param("x").as_deref(), Some("1"));
        assert_eq!(req.header("label"), Some("a"));
        assert!(req.expects_continue());
        assert!(!req.wants_close());
        assert_eq!(req.framing().unwrap(), Framing::Length(0));
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[tokio::test]
    async fn reads_chunked_bodies() {
        let (client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let mut client = client;
            client
                .write_all(b"5\r\nhello\r\n3;x=y\r\n ab\r\n0\r\nT: v\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let mut conn = BufReader::new(server);
        let mut body = Vec::new();
        let n = read_body(&mut conn, Framing::Chunked, |c| body.extend_from_slice(c))
            .await
            .unwrap();
        assert_eq!((n, body.as_slice()), (8, &b"hello ab"[..]));
        drop(writer.await.unwrap());
        let mut body = Vec::new();
        let (client, server) = tokio::io::duplex(64);
        drop(tokio::spawn(async move {
            let mut client = client;
            client.write_all(b"abc").await.unwrap();
        }));
        let mut conn = BufReader::new(server);
        let err = read_body(&mut conn, Framing::Length(10), |c| {
            body.extend_from_slice(c)
        })
        .await;
        assert!(matches!(err, Err(BodyError::Truncated(3))), "{err:?}");
    }
}
