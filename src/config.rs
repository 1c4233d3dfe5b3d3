//! The configuration: the TOML file's shape, its defaults, and the validated `Config`.
//!
//! `Config::load` reads the file, resolves the password source, and checks every rule that can be
//! checked without the network; each error names the key and the line it was found on. The rest
//! of the crate only ever sees a validated `Config`. The file's serde shape and every default
//! live in `file`; the TOML tree with its spans in `document`; the rules in `validate`, `watch`,
//! `endpoint` and `password`.

mod document;
mod endpoint;
mod error;
mod file;
mod password;
mod validate;
mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{ConfigError, Problem};

/// A validated configuration. Its rules hold for the life of the value: the endpoint is https
/// unless plain HTTP was allowed, limits are above zero, every watch names a database and table.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub ledger: LedgerConfig,
    pub load: LoadConfig,
    pub metrics: MetricsConfig,
    pub watches: Vec<WatchConfig>,
}

impl Config {
    /// Reads the file at `path`, validates it and resolves the password from the process
    /// environment (`password_env`, `$CREDENTIALS_DIRECTORY`).
    ///
    /// Relative paths in the file are taken relative to the file's own directory.
    ///
    /// # Errors
    ///
    /// Every problem found, each with its line and key: the file cannot be read, TOML syntax,
    /// unknown keys, wrong types, and every rule of `parse`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::single(
                path,
                format!("cannot read config file: {}", error::describe_io(&err)),
            )
        })?;
        validate::parse(
            &text,
            path,
            &|name| std::env::var(name).ok(),
            validate::Password::Resolve,
        )
    }

    /// Like [`Config::load`] but without reading the password: for commands that only read
    /// the ledger, so that auditors need no access to the secret. The password is empty.
    ///
    /// # Errors
    ///
    /// As for [`Config::load`], less the password's problems.
    pub fn load_without_password(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::single(
                path,
                format!("cannot read config file: {}", error::describe_io(&err)),
            )
        })?;
        validate::parse(
            &text,
            path,
            &|name| std::env::var(name).ok(),
            validate::Password::Skip,
        )
    }

    /// Validates `text` as the config file `origin` and resolves the password.
    ///
    /// `origin` names the file in messages and anchors relative paths (its directory); `env`
    /// looks up environment variables, so tests can pass a map instead of the process
    /// environment. The filesystem is consulted: watched directories must exist, the password
    /// and CA files are read.
    ///
    /// # Errors
    ///
    /// All problems of the file at once, not just the first; see [`ConfigError`].
    pub fn parse(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        validate::parse(text, origin, env, validate::Password::Resolve)
    }
}

/// `[cluster]`: where and how to reach the Stream Load endpoint.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Accept `http://` endpoints and https→http redirects (credentials then travel in clear).
    pub allow_insecure_http: bool,
    /// PEM bundle of trusted CAs; `None` means the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain offered to a cluster behind mutual TLS; set together with
    /// `client_key`, or neither is.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`; private to its owner, like `password_file`.
    pub client_key: Option<PathBuf>,
    /// Base URL of the FE (or proxy), e.g. `https://fe.example.com:8443`; no trailing slash.
    pub endpoint: Endpoint,
    /// The cluster's label window (`label_keep_max_second`), default 3 days.
    pub label_keep: Duration,
    /// The password of `user`, from `password_file`, `password_env` or `password_credential`.
    pub password: Secret,
    /// Where advertised BE addresses (`host:port`) are rewritten to reachable ones. Both sides
    /// are normalized: host in lowercase, IPv6 in brackets, port always present
    /// (see [`Endpoint::authority`]).
    pub redirect_map: BTreeMap<String, String>,
    pub ssl_mode: SslMode,
    /// Whole-request timeout for one Stream Load attempt, default 10 minutes.
    pub timeout: Duration,
    pub user: String,
}

/// A parsed endpoint URL: scheme, host and port, nothing else (no path, query or userinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    /// Host name in lowercase or IP address; an IPv6 address without its brackets.
    pub host: String,
    /// The port, 443 or 80 by scheme when the URL names none.
    pub port: u16,
}

impl Endpoint {
    /// `host:port`, with an IPv6 host in brackets: the authority part of a URL.
    pub fn authority(&self) -> String {
        endpoint::format_authority(&self.host, self.port)
    }
}

/// `scheme://host:port`, with no trailing slash.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.authority())
    }
}

/// The endpoint's URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL of this scheme means when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// How much of the server's certificate is checked, in the cluster's own terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Encrypted, nothing verified.
    Required,
    /// Chain verified against the trusted CAs, any name.
    VerifyCa,
    /// Chain and hostname (or IP SAN) verified.
    #[default]
    VerifyIdentity,
}

/// `[ledger]`.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    /// The sled directory, default `/var/lib/sluice/ledger`.
    pub path: PathBuf,
}

/// `[load]`: how files are taken and submitted.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Most loads in flight at once, default 4.
    pub max_in_flight: usize,
    /// Give up retrying after this many attempts, default 10.
    pub max_attempts: u32,
    /// Interval of the full rescan that catches lost events, default 30s.
    pub rescan: Duration,
    /// First retry delay, default 5s; doubled per attempt, with jitter.
    pub retry_initial: Duration,
    /// Longest retry delay, default 5m.
    pub retry_max: Duration,
    /// A file is ready when its size and mtime have not changed for this long, default 5s.
    pub settle: Duration,
    /// How long running attempts may finish after SIGTERM, default 30s.
    pub shutdown_grace: Duration,
}

/// `[metrics]`: where `sluice run` serves Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// A loopback address and port (`127.0.0.1:9833`, `[::1]:9833`); `None` (the default)
    /// serves nothing.
    pub listen: Option<std::net::SocketAddr>,
}

/// One `[[watch]]`: a landing directory and its target table.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub after_load: AfterLoad,
    /// Sent as the `column_separator` header, as written (`,`, `\x01`, `||`); a value holding
    /// control characters (a TOML `"\t"`) is turned into the cluster's hex form (`\x09`), which
    /// is also the default, because a bare tab would be trimmed from an HTTP header.
    pub column_separator: String,
    pub database: String,
    pub dir: PathBuf,
    /// Where loaded files go with `after_load = "move"`, default `<dir>/done`.
    pub done_dir: PathBuf,
    /// Where refused files go, with the cluster's answer beside them, default `<dir>/failed`.
    pub failed_dir: PathBuf,
    /// `[watch.headers]`, passed to Stream Load as is.
    pub headers: BTreeMap<String, String>,
    /// Glob patterns of file names that are never loaded (dotfiles, `*.tmp`, ... by default).
    pub ignore: Vec<String>,
    /// Prefix of every label of this watch, default `sluice_`.
    pub label_prefix: String,
    /// When set (e.g. `.ok`), `x.csv` is ready only once `x.csv.ok` exists.
    pub marker_suffix: Option<String>,
    pub table: String,
    /// Where claimed files wait while they load, default `<dir>/.sluice-work`; same filesystem.
    pub work_dir: PathBuf,
}

/// What happens to a file once its outcome is durable in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLoad {
    Delete,
    Keep,
    Move,
}

/// A password. Its `Debug` and `Display` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for building the Authorization header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl WatchConfig {
    /// `database.table`, the ledger's name for the target.
    pub fn target(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }
}
