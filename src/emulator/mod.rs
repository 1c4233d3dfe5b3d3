//! The built-in Stream Load emulator: a real HTTP/1.1 server on loopback, with TLS from a CA it
//! generates, that answers like a StarRocks FE and BE (or like CelerData's HTTPS endpoint) on the
//! wire. `sluice demo`, `sluice emulate`, the integration tests and the benchmarks use it.
//!
//! # Shape
//!
//! - [`Mode::Redirect`]: the FE listens on `https://localhost:PORT` and answers every load with a
//!   307 to the BE, which listens on plain `http://127.0.0.1:PORT`, as a self-hosted cluster
//!   with FE HTTPS does. [`Mode::RedirectTlsBe`]: the same, but the BE speaks TLS too (a
//!   TLS-terminating proxy per BE); the Location then says `https`. [`Mode::Proxy`]: one TLS port
//!   that does the FE's checks and then the BE's job on the same connection, as CelerData's HTTPS
//!   endpoint or the Kubernetes operator's FE proxy look to a client: it sends `100 Continue` and
//!   loads. The FE routes (`get_load_state`, `/_emulator/*`) are served on that port as well.
//!
//! # FE (`PUT /api/{db}/{table}/_stream_load`)
//!
//! Checks in the real order: basic auth (401, `WWW-Authenticate: Basic realm=""`, lower-case
//! `RestBaseResult` JSON: `Need auth information.` or `Access denied for <user>@<ip>`), then
//! `Expect: 100-continue` on HTTP/1.1 (HTTP 200 `{"Status":"FAILED","Message":"class
//! com.starrocks.common.DdlException: There is no 100-continue header"}`; HTTP/1.0 skips the
//! check), then non-empty db and table, then 307 with `Location: http://127.0.0.1:<be
//! port><same path and query>`, an empty body and `Connection: close`. It never sends
//! `100 Continue`, never reads the body, and closes the connection after every load answer.
//! `GET /api/{db}/get_load_state?label=L` answers `{"state":...,"status":"OK","code":"0",
//! "msg":"Success","message":"OK"}`; `UNKNOWN` for unknown or expired labels.
//! `GET /api/{db}/{table}/_schema` answers as StarRocks' `TableSchemaAction`: basic auth, then
//! HTTP 404 `{"status":404,"exception":"Database [db] does not exists"}` (or `Table [t]`), else
//! 200 `{"status":200,"properties":[{"type":"VARCHAR","comment":"","name":"c1"},...]}`.
//!
//! # BE (and the proxy)
//!
//! Header phase first, answered at once (HTTP 200 load JSON, no `100 Continue`, body never read,
//! then `Connection: close`): no or bad Authorization, unknown format, bad `timeout`; then what
//! the FE checks when the BE begins the transaction: password, database, table, label format,
//! timeout range, label in use (`Label Already Exists` with `ExistingJobStatus` `RUNNING` or
//! `FINISHED`, `TxnId` -1). Then the plan checks (separators, `skip_header`, `trim_space`,
//! `max_filter_ratio`, ...), which, as in the real BE, come after the transaction began: they
//! answer `Fail` with that `TxnId` and leave the label `ABORTED`. Otherwise the BE sends
//! `100 Continue` (when asked for and the body is not empty), streams the body (Content-Length
//! or chunked; neither means an empty body, as in HTTP/1.1) through the CSV parser, decides, and
//! answers with the keys in the real order, pretty-printed.
//!
//! Labels are unique per database; an `ABORTED` label may be used again; finished labels
//! (`VISIBLE`, `ABORTED`) are forgotten `label_keep` after they finished, on the emulator's clock
//! (real time plus [`Emulator::advance_clock`]). Rows with the wrong field count are filtered
//! (`Value count does not match column count. Expect 3, but got 2.`), listed at the `ErrorURL`
//! (`GET /api/_load_error_log?file=error_log_<id>` on the BE, first 50 rows per load, the last
//! 256 logs kept), and judged against `max_filter_ratio`. Blank lines are skipped, as the real
//! CSV scanner does.
//!
//! # Test endpoints (FE, or the proxy port; same basic auth as loads)
//!
//! - `GET /_emulator/stats`: the [`Stats`] JSON.
//! - `POST /_emulator/clock?advance=SECONDS`: moves the label-window clock forward.
//! - `POST /_emulator/fault?kind=KIND[&for=DURATION]`: queues a [`Fault`]; `KIND` is one of
//!   `http500`, `close_before_commit`, `commit_then_close`, `slow_answer` (with `for`),
//!   `publish_timeout`, `mem_limit`, `too_many_versions`, `running_for` (with `for`); `for` is a
//!   humantime duration such as `2s`.
//!
//! # Deliberate differences from the real servers
//!
//! - Only CSV: `format: json` and the compressed formats are refused with the real
//!   `unknown data format, format=<f>` text. `columns` only decides how many fields a row must
//!   have (the entries without `=`); `where`, `partitions`, `strict_mode` values and the rest are
//!   checked for shape where the BE checks them, and otherwise ignored. No UTF-8 check of rows.
//! - `max_filter_ratio` outside 0..=1 and a column separator over 50 bytes are refused with the
//!   emulator's own wording (the real servers word or check these differently by version).
//! - With `enclose`, any unescaped enclose byte toggles quoting, wherever it is in a field; a
//!   doubled enclose inside a quoted field is one literal enclose byte. Rows over 64 MiB are
//!   filtered (`Row is too long`) so that memory stays flat.
//! - Faults queue in order; each load that begins a transaction takes the next one, except
//!   [`Fault::Http500`], which the next load request takes as it arrives. A connection cut
//!   ([`Fault::CloseBeforeCommit`], a short body) leaves the label `ABORTED`, so it is free again.
//! - The `ErrorURL` and the Location name `127.0.0.1` and the BE's real port; in proxy mode they
//!   name the proxy itself over https, where the real cloud would name an internal node.
//! - Header-phase refusals close the connection after the answer (draining a little of any
//!   body already on its way so the answer is not lost to a reset).

mod be;
mod certs;
mod cli;
mod csv;
mod fe;
mod http;
mod server;
mod state;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use certs::CertKind;
pub use cli::{EmulateArgs, run_cli};

use server::{Listener, Role, Shared};
use state::State;

const THREE_DAYS: Duration = Duration::from_secs(3 * 24 * 3600);

/// How the emulator is built and what it knows.
#[derive(Clone)]
pub struct EmulatorOptions {
    /// Which server certificate the FE, the TLS BE and the proxy present; default
    /// [`CertKind::Good`]. The CA handed out by [`Emulator::ca_pem`] is the same for every kind.
    pub cert: CertKind,
    /// Demand a client certificate (mutual TLS) on every TLS port; default false. The one the
    /// emulator accepts is in [`Emulator::client_identity`].
    pub client_auth: bool,
    /// Answer loads with an error when no row was loaded, like the FE config of that name;
    /// default true. When false an empty load succeeds with 0 rows.
    pub empty_load_as_error: bool,
    /// Rows kept per table for tests to read in [`TableStats::sample`] (counts are always kept);
    /// default 1000.
    pub keep_rows: usize,
    /// How long finished labels are remembered (`label_keep_max_second`); default 3 days.
    pub label_keep: Duration,
    /// Extra time each load takes before its body is read; default none. For tests that need
    /// loads to overlap.
    pub load_delay: Duration,
    pub mode: Mode,
    /// The password that basic auth must carry; default `sluice-emulator`. Never logged.
    pub password: String,
    /// Port of the FE (or the proxy) on 127.0.0.1; 0 picks a free one (the default). The BE
    /// always takes a free port.
    pub port: u16,
    /// The declared tables; loads into any other table fail as the real BE says.
    pub tables: Vec<TableSpec>,
    /// The user that basic auth must carry; default `root`.
    pub user: String,
}

impl Default for EmulatorOptions {
    fn default() -> EmulatorOptions {
        EmulatorOptions {
            cert: CertKind::Good,
            client_auth: false,
            empty_load_as_error: true,
            keep_rows: 1000,
            label_keep: THREE_DAYS,
            load_delay: Duration::ZERO,
            mode: Mode::Redirect,
            password: "sluice-emulator".to_string(),
            port: 0,
            tables: Vec::new(),
            user: "root".to_string(),
        }
    }
}

impl fmt::Debug for EmulatorOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorOptions")
            .field("cert", &self.cert)
            .field("client_auth", &self.client_auth)
            .field("empty_load_as_error", &self.empty_load_as_error)
            .field("keep_rows", &self.keep_rows)
            .field("label_keep", &self.label_keep)
            .field("mode", &self.mode)
            .field("password", &"***")
            .field("port", &self.port)
            .field("tables", &self.tables)
            .field("user", &self.user)
            .finish()
    }
}

/// A declared table: its database, name and number of columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub columns: usize,
    pub database: String,
    pub table: String,
}

/// A `--table` value that is not `db.table:ncols`.
#[derive(Debug, thiserror::Error)]
#[error("invalid table `{value}`: {reason} (expected `db.table:ncols`)")]
pub struct TableSpecError {
    value: String,
    reason: &'static str,
}

impl TableSpec {
    /// Parses `db.table:ncols`, e.g. `sales.orders:3`.
    ///
    /// # Errors
    ///
    /// When a part is missing or empty, or the column count is not a number above zero.
    pub fn parse(s: &str) -> Result<TableSpec, TableSpecError> {
        let fail = |reason| TableSpecError {
            value: s.to_string(),
            reason,
        };
        let (name, columns) = s.rsplit_once(':').ok_or_else(|| fail("no `:ncols`"))?;
        let (database, table) = name.split_once('.').ok_or_else(|| fail("no `.`"))?;
        if database.is_empty() || table.is_empty() {
            return Err(fail("empty database or table"));
        }
        let columns: usize = columns
            .parse()
            .map_err(|_| fail("column count is not a number"))?;
        if columns == 0 {
            return Err(fail("column count must be above zero"));
        }
        Ok(TableSpec {
            columns,
            database: database.to_string(),
            table: table.to_string(),
        })
    }
}

/// Where the BE is and how the client reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// FE over https, 307 to a BE over plain http (self-hosted StarRocks).
    Redirect,
    /// FE over https, 307 to a BE over https (a TLS-terminating proxy per BE).
    RedirectTlsBe,
    /// One https port that checks and loads at once (CelerData's endpoint, an FE proxy).
    Proxy,
}

/// A one-shot fault applied to the next load; see the module doc for which load takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer HTTP 500 at once; nothing begins, the label stays free.
    Http500,
    /// Read the body, then close the connection without an answer; nothing is committed and
    /// the label is `ABORTED` (free again).
    CloseBeforeCommit,
    /// Commit the rows, then close the connection without an answer: the lost acknowledgement.
    CommitThenClose,
    /// Commit, then wait this long before answering.
    SlowAnswer(Duration),
    /// Commit, answer `Publish Timeout`; the label is `COMMITTED` and turns `VISIBLE` after
    /// [`PUBLISH_DELAY`] on the emulator's clock.
    PublishTimeout,
    /// Read the body, fail with `Memory of process exceed limit. ...`; aborted.
    MemLimit,
    /// Read the body, fail with the too-many-versions text; aborted.
    TooManyVersions,
    /// Keep the transaction `PREPARE` for this long of real time after the body was read, then
    /// commit and answer.
    RunningFor(Duration),
}

/// How long a [`Fault::PublishTimeout`] commit stays `COMMITTED` before it is `VISIBLE`.
pub const PUBLISH_DELAY: Duration = Duration::from_secs(5);

/// A fault name that the test endpoint does not know, or that lacks its duration.
#[derive(Debug, thiserror::Error)]
#[error("unknown fault `{0}`")]
pub struct FaultError(String);

impl Fault {
    /// Builds a fault from the test endpoint's `kind` and optional `for` (humantime).
    ///
    /// # Errors
    ///
    /// When `kind` is unknown, or `slow_answer` / `running_for` come without a valid `for`.
    pub fn parse(kind: &str, duration: Option<&str>) -> Result<Fault, FaultError> {
        let duration = || {
            duration
                .and_then(|d| humantime::parse_duration(d).ok())
                .ok_or_else(|| FaultError(format!("{kind} (needs for=DURATION)")))
        };
        Ok(match kind {
            "http500" => Fault::Http500,
            "close_before_commit" => Fault::CloseBeforeCommit,
            "commit_then_close" => Fault::CommitThenClose,
            "slow_answer" => Fault::SlowAnswer(duration()?),
            "publish_timeout" => Fault::PublishTimeout,
            "mem_limit" => Fault::MemLimit,
            "too_many_versions" => Fault::TooManyVersions,
            "running_for" => Fault::RunningFor(duration()?),
            other => return Err(FaultError(other.to_string())),
        })
    }
}

/// What the emulator holds, for tests to read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Keyed by `db/label`. Entries outlive the label window (their state then reads
    /// `UNKNOWN`), so a test can see a second commit of the same label after expiry.
    pub labels: BTreeMap<String, LabelStats>,
    /// Most loads that were past their header phase at one moment.
    pub max_concurrent_loads: u64,
    /// Keyed by `db.table`; every declared table is present.
    pub tables: BTreeMap<String, TableStats>,
}

/// One declared table.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableStats {
    /// Committed transactions that loaded into the table (including empty ones).
    pub commits: u64,
    /// Rows committed, in total.
    pub rows: u64,
    /// The first `keep_rows` committed rows, as parsed fields.
    pub sample: Vec<Vec<String>>,
}

/// One label of one database.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabelStats {
    /// Load requests that named the label and reached the label check (including those refused
    /// because the label was in use).
    pub attempts: u64,
    /// Commits under the label (more than one only after the window forgot an earlier one).
    pub commits: u64,
    /// Rows committed under the label, over all its commits.
    pub rows: u64,
    /// `PREPARE`, `COMMITTED`, `VISIBLE`, `ABORTED`, or `UNKNOWN` once expired.
    pub state: String,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("failed to bind the emulator on `{addr}`")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to generate the emulator's certificates")]
    Certificate(#[from] rcgen::Error),
    #[error("failed to build the emulator's TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// A running emulator. It stops when [`Emulator::shutdown`] is called or when it is dropped
/// (its listeners and connections end at their next await).
pub struct Emulator {
    be_addr: SocketAddr,
    ca_pem: String,
    client: Option<certs::ClientIdentity>,
    fe_addr: SocketAddr,
    /// Dropping (or sending on) this tells every listener and connection to stop.
    shutdown: watch::Sender<()>,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emulator")
            .field("be_addr", &self.be_addr)
            .field("fe_addr", &self.fe_addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Generates a CA and a server certificate, binds the FE (or proxy) and the BE on
    /// 127.0.0.1, and starts serving.
    ///
    /// # Errors
    ///
    /// When a port cannot be bound or the certificates cannot be built.
    pub async fn start(opts: EmulatorOptions) -> Result<Emulator, EmulatorError> {
        let certs = certs::generate(opts.cert, opts.client_auth)?;
        let fe_listener = bind(SocketAddr::from(([127, 0, 0, 1], opts.port))).await?;
        let fe_addr = local_addr(&fe_listener)?;
        let (be_listener, be_addr) = match opts.mode {
            Mode::Proxy => (None, fe_addr),
            Mode::Redirect | Mode::RedirectTlsBe => {
                let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
                let addr = local_addr(&listener)?;
                (Some(listener), addr)
            }
        };
        let be_tls = opts.mode != Mode::Redirect;
        let mode = opts.mode;
        let state = Arc::new(State::new(opts));
        let shared = Arc::new(Shared {
            state: state.clone(),
            be_addr,
            be_tls,
        });
        let (shutdown, signal) = watch::channel(());

        let fe_role = if mode == Mode::Proxy {
            Role::Proxy
        } else {
            Role::Fe
        };
        let mut tasks = vec![tokio::spawn(
            Listener {
                listener: fe_listener,
                role: fe_role,
                shared: shared.clone(),
                shutdown: signal.clone(),
                tls: Some(certs.acceptor.clone()),
            }
            .run(),
        )];
        if let Some(listener) = be_listener {
            let tls = be_tls.then(|| certs.acceptor.clone());
            tasks.push(tokio::spawn(
                Listener {
                    listener,
                    role: Role::Be,
                    shared,
                    shutdown: signal,
                    tls,
                }
                .run(),
            ));
        }
        tracing::info!(fe = %fe_addr, be = %be_addr, ?mode, "emulator started");
        Ok(Emulator {
            be_addr,
            ca_pem: certs.ca_pem,
            client: certs.client,
            fe_addr,
            shutdown,
            state,
            tasks,
        })
    }

    /// `https://localhost:PORT` of the FE (or the proxy).
    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.fe_addr.port())
    }

    /// The address of the FE (or the proxy).
    pub fn fe_addr(&self) -> SocketAddr {
        self.fe_addr
    }

    /// The address of the BE; in proxy mode, the proxy's.
    pub fn be_addr(&self) -> SocketAddr {
        self.be_addr
    }

    /// PEM of the generated CA. The server certificate has the SANs `localhost`, `127.0.0.1`
    /// and `::1` (other names, or another issuer, by [`EmulatorOptions::cert`]).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The client certificate and its private key (both PEM) that the emulator accepts, when
    /// it was started with [`EmulatorOptions::client_auth`].
    pub fn client_identity(&self) -> Option<(&str, &str)> {
        self.client
            .as_ref()
            .map(|c| (c.cert_pem.as_str(), c.key_pem.as_str()))
    }

    /// A snapshot of tables and labels.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Moves the label-window clock forward (it also runs with real time).
    /// Changes the password the emulator accepts from now on (tests of refused credentials).
    pub fn set_password(&self, password: &str) {
        self.state.set_password(password);
    }

    pub fn advance_clock(&self, by: Duration) {
        self.state.advance_clock(by);
    }

    /// Queues a one-shot fault for the next load(s).
    pub fn inject(&self, fault: Fault) {
        self.state.inject(fault);
    }

    /// Stops the listeners and every open connection, and waits for the listeners to end.
    pub async fn shutdown(self) {
        let Emulator {
            shutdown, tasks, ..
        } = self;
        drop(shutdown);
        for task in tasks {
            let _ = task.await;
        }
        tracing::info!("emulator stopped");
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, EmulatorError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EmulatorError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, EmulatorError> {
    listener.local_addr().map_err(|source| EmulatorError::Bind {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_table_specs() {
        let spec = TableSpec::parse("sales.orders:3").unwrap();
        assert_eq!(
            spec,
            TableSpec {
                columns: 3,
                database: "sales".into(),
                table: "orders".into()
            }
        );
        assert!(TableSpec::parse("sales.orders").is_err());
        assert!(TableSpec::parse("orders:3").is_err());
        assert!(TableSpec::parse(".orders:3").is_err());
        assert!(TableSpec::parse("a.b:0").is_err());
        assert!(TableSpec::parse("a.b:x").is_err());
    }

    #[test]
    fn parses_faults() {
        assert_eq!(Fault::parse("http500", None).unwrap(), Fault::Http500);
        assert_eq!(
            Fault::parse("slow_answer", Some("2s")).unwrap(),
            Fault::SlowAnswer(Duration::from_secs(2))
        );
        assert!(Fault::parse("slow_answer", None).is_err());
        assert!(Fault::parse("nope", None).is_err());
    }

    #[test]
    fn options_debug_hides_the_password() {
        let text = format!("{:?}", EmulatorOptions::default());
        assert!(!text.contains("sluice-emulator"), "{text}");
    }
}
