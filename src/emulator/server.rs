//! Listeners and connections: accepts on a port, speaks TLS where the role needs it, reads
//! request after request on a connection and hands each to the FE or the BE by route.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::http::{self, Conn, Framing, HeadError, Io, Request, Response};
use super::state::State;
use super::{be, fe};

/// Read buffer per connection; bodies are parsed straight out of it.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// How long a connection may sit idle between requests, or in its TLS handshake.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bodies of requests that carry no data (state queries, test endpoints) are read and dropped up
/// to this size; larger ones close the connection instead.
const MAX_IGNORED_BODY_BYTES: u64 = 1 << 20;

/// Which server a port plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Fe,
    Be,
    Proxy,
}

/// What every connection needs to know.
pub(crate) struct Shared {
    pub(crate) be_addr: SocketAddr,
    pub(crate) be_tls: bool,
    pub(crate) state: Arc<State>,
}

impl Shared {
    /// `scheme://127.0.0.1:port` of the BE, as the Location and the ErrorURL name it.
    pub(crate) fn be_base(&self) -> String {
        let scheme = if self.be_tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.be_addr.port())
    }
}

/// What happens to a connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Read the next request.
    KeepAlive,
    /// Close our side now (answered, or deliberately not answering).
    Close,
    /// Close our side, then drain what the client still sends for a moment.
    Linger,
}

/// A request's place in the routes of both servers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    StreamLoad { database: String, table: String },
    LoadState { database: String },
    TableSchema { database: String, table: String },
    ErrorLog,
    EmulatorStats,
    EmulatorClock,
    EmulatorFault,
    NotFound,
}

impl Route {
    pub(crate) fn of(req: &Request) -> Route {
        let segments: Vec<String> = req.path.split('/').map(http::percent_decode).collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (req.method.as_str(), segments.as_slice()) {
            ("PUT", ["", "api", database, table, "_stream_load"]) => Route::StreamLoad {
                database: database.to_string(),
                table: table.to_string(),
            },
            ("GET", ["", "api", database, "get_load_state"]) => Route::LoadState {
                database: database.to_string(),
            },
            ("GET", ["", "api", "_load_error_log"]) => Route::ErrorLog,
            ("GET", ["", "api", database, table, "_schema"]) => Route::TableSchema {
                database: database.to_string(),
                table: table.to_string(),
            },
            ("GET", ["", "_emulator", "stats"]) => Route::EmulatorStats,
            ("POST", ["", "_emulator", "clock"]) => Route::EmulatorClock,
            ("POST", ["", "_emulator", "fault"]) => Route::EmulatorFault,
            _ => Route::NotFound,
        }
    }
}

/// One listening port.
pub(crate) struct Listener {
    pub(crate) listener: TcpListener,
    pub(crate) role: Role,
    pub(crate) shared: Arc<Shared>,
    /// Resolves when the emulator stops.
    pub(crate) shutdown: watch::Receiver<()>,
    pub(crate) tls: Option<TlsAcceptor>,
}

impl Listener {
    /// Accepts until the emulator stops; each connection runs in its own task, which also ends
    /// when the emulator stops.
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => self.spawn_connection(tcp, peer),
                    Err(err) => {
                        tracing::warn!(error = %err, "emulator accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                _ = self.shutdown.changed() => return,
            }
        }
    }

    fn spawn_connection(&self, tcp: TcpStream, peer: SocketAddr) {
        let (role, shared, tls) = (self.role, self.shared.clone(), self.tls.clone());
        let mut shutdown = self.shutdown.clone();
        let span = tracing::trace_span!("emulator_connection", ?role, %peer);
        let work = async move {
            let _ = tcp.set_nodelay(true);
            match tls {
                None => serve(tcp, peer, role, &shared).await,
                Some(acceptor) => {
                    match tokio::time::timeout(IDLE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve(stream, peer, role, &shared).await,
                        Ok(Err(err)) => tracing::debug!(error = %err, "tls handshake failed"),
                        Err(_) => tracing::debug!("tls handshake timed out"),
                    }
                }
            }
        };
        tokio::spawn(
            async move {
                tokio::select! {
                    () = work => {}
                    _ = shutdown.changed() => {}
                }
            }
            .instrument(span),
        );
    }
}

async fn serve<S: Io>(io: S, peer: SocketAddr, role: Role, shared: &Shared) {
    let mut conn = BufReader::with_capacity(READ_BUFFER_BYTES, io);
    loop {
        let req = match tokio::time::timeout(IDLE_TIMEOUT, http::read_head(&mut conn)).await {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Err(HeadError::Io(err))) => {
                tracing::debug!(error = %err, "connection ended while reading a request");
                return;
            }
            Ok(Err(HeadError::Malformed)) => {
                let answer = Response::text(400, "Bad Request").closing();
                if http::write_response(&mut conn, &answer).await.is_ok() {
                    http::linger_close(&mut conn).await;
                }
                return;
            }
            Ok(Ok(Some(req))) => req,
        };
        tracing::trace!(method = %req.method, target = %req.target, "request");
        match exchange(&mut conn, &req, peer, role, shared).await {
            Ok(After::KeepAlive) => {}
            Ok(After::Close) => return http::close_now(&mut conn).await,
            Ok(After::Linger) => return http::linger_close(&mut conn).await,
            Err(err) => {
                tracing::debug!(error = %err, "connection ended");
                return;
            }
        }
    }
}

async fn exchange<S: Io>(
    conn: &mut Conn<S>,
    req: &Request,
    peer: SocketAddr,
    role: Role,
    shared: &Shared,
) -> io::Result<After> {
    match (role, Route::of(req)) {
        (Role::Fe, Route::StreamLoad { database, table }) => {
            fe::stream_load(conn, req, peer, shared, &database, &table).await
        }
        (Role::Proxy, Route::StreamLoad { database, table }) => {
            if let Err(answer) = fe::check_stream_load(req, peer, &shared.state, &database, &table)
            {
                http::write_response(conn, &answer).await?;
                return Ok(After::Linger);
            }
            be::load(conn, req, peer, shared, &database, &table).await
        }
        (Role::Be, Route::StreamLoad { database, table }) => {
            be::load(conn, req, peer, shared, &database, &table).await
        }
        (Role::Be | Role::Proxy, Route::ErrorLog) => {
            answer_without_body(conn, req, be::error_log(req, &shared.state)).await
        }
        (
            Role::Fe | Role::Proxy,
            route @ (Route::LoadState { .. }
            | Route::TableSchema { .. }
            | Route::EmulatorStats
            | Route::EmulatorClock
            | Route::EmulatorFault),
        ) => answer_without_body(conn, req, fe::query(req, peer, &shared.state, route)).await,
        _ => answer_without_body(conn, req, Response::text(404, "Not Found")).await,
    }
}

/// Answers a request whose body means nothing: drops a small body, closes on a large one.
async fn answer_without_body<S: Io>(
    conn: &mut Conn<S>,
    req: &Request,
    answer: Response,
) -> io::Result<After> {
    let readable = match req.framing() {
        Ok(Framing::Length(n)) if n <= MAX_IGNORED_BODY_BYTES => {
            http::read_body(conn, Framing::Length(n), |_| {})
                .await
                .is_ok()
        }
        _ => false,
    };
    let close = !readable || req.wants_close();
    let answer = if close { answer.closing() } else { answer };
    http::write_response(conn, &answer).await?;
    Ok(if readable && !close {
        After::KeepAlive
    } else if readable {
        After::Close
    } else {
        After::Linger
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes_requests() {
        let head = |line: &str| {
            let (client, server) = tokio::io::duplex(1024);
            let line = line.to_string();
            async move {
                use tokio::io::AsyncWriteExt;
                let mut client = client;
                client
                    .write_all(format!("{line} HTTP/1.1\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
                let mut conn = BufReader::new(server);
                http::read_head(&mut conn).await.unwrap().unwrap()
            }
        };
        let req = head("PUT /api/d%20b/t/_stream_load?x=1").await;
        assert_eq!(
            Route::of(&req),
            Route::StreamLoad {
                database: "d b".into(),
                table: "t".into()
            }
        );
        assert_eq!(
            Route::of(&head("GET /api/db/get_load_state?label=x").await),
            Route::LoadState {
                database: "db".into()
            }
        );
        assert_eq!(
            Route::of(&head("POST /api/db/t/_stream_load").await),
            Route::NotFound
        );
        assert_eq!(
            Route::of(&head("GET /_emulator/stats").await),
            Route::EmulatorStats
        );
    }
}
