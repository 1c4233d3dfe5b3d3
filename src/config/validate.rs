//! From the file shape to a validated `Config`: the rules of `[cluster]`, `[ledger]` and
//! `[load]`, and the `Checker` that collects problems with their lines.
//!
//! Every rule reports on the checker and carries on with the default, so one run finds every
//! problem; the `Config` is only handed out when none was found.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::document::{Document, Found, KeyPath};
use crate::config::endpoint::{normalize_host_port, parse_endpoint};
use crate::config::error::describe_io;
use crate::config::file::{
    ClusterFile, FileConfig, LedgerFile, LoadFile, MetricsFile, SslModeFile, defaults,
};
use crate::config::password::{ensure_private, resolve_password};
use crate::config::{
    ClusterConfig, Config, ConfigError, LedgerConfig, LoadConfig, MetricsConfig, Problem, Scheme,
    Secret, SslMode, watch,
};

/// Whether the password is read while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Password {
    Resolve,
    /// For commands that never reach the cluster (the ledger's readers), so that auditors
    /// need no access to the secret.
    Skip,
}

/// Validates `text` as the config file `origin`; see `Config::parse`.
pub(super) fn parse(
    text: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    password: Password,
) -> Result<Config, ConfigError> {
    let document = Document::parse(text)
        .map_err(|found| ConfigError::new(origin, found.into_iter().map(problem_of).collect()))?;
    let (file, refused) = document.deserialize_all::<FileConfig>();
    let mut checker = Checker::new(&document, config_dir(origin), refused);

    let root = KeyPath::root();
    let cluster = build_cluster(
        &mut checker,
        &root.key("cluster"),
        file.cluster,
        env,
        password,
    );
    let ledger = build_ledger(&mut checker, &root.key("ledger"), file.ledger);
    let load = build_load(&mut checker, &root.key("load"), file.load);
    let metrics = build_metrics(&mut checker, &root.key("metrics"), file.metrics);
    let watches = watch::build_watches(&mut checker, &root.key("watch"), file.watch);

    let problems = checker.problems;
    match cluster {
        Some(cluster) if problems.is_empty() => Ok(Config {
            cluster,
            ledger,
            load,
            metrics,
            watches,
        }),
        _ => Err(ConfigError::new(origin, problems)),
    }
}

/// Collects problems, each with the line of its key, and resolves paths against the config
/// file's directory.
pub(super) struct Checker<'d> {
    document: &'d Document<'d>,
    /// The directory of the config file, absolute when the working directory is known.
    base_dir: PathBuf,
    problems: Vec<Problem>,
    /// Keys serde refused (reported already); their absence is not reported again.
    refused: HashSet<String>,
}

impl<'d> Checker<'d> {
    fn new(document: &'d Document<'d>, base_dir: PathBuf, refused: Vec<Found>) -> Checker<'d> {
        Checker {
            document,
            base_dir,
            refused: refused.iter().map(|found| found.path.to_string()).collect(),
            problems: refused.into_iter().map(problem_of).collect(),
        }
    }

    /// Records that the key at `path` is wrong.
    pub(super) fn report(&mut self, path: &KeyPath, message: impl Into<String>) {
        self.problems.push(Problem {
            line: self.document.line_of(path),
            key: path.to_string(),
            message: message.into(),
        });
    }

    /// Whether serde refused the key at `path` (its problem is already recorded).
    pub(super) fn is_refused(&self, path: &KeyPath) -> bool {
        self.refused.contains(&path.to_string())
    }

    /// The value of a required key, reporting its absence.
    pub(super) fn require<T>(&mut self, path: &KeyPath, value: Option<T>) -> Option<T> {
        if value.is_none() && !self.is_refused(path) {
            self.report(path, "missing required key");
        }
        value
    }

    /// `path` made absolute against the config file's directory, `.` components removed.
    /// Reports an empty path.
    pub(super) fn resolve_path(&mut self, key: &KeyPath, path: &Path) -> Option<PathBuf> {
        if path.as_os_str().is_empty() {
            self.report(key, "the path is empty");
            return None;
        }
        Some(self.base_dir.join(path).components().collect())
    }

    /// A humantime duration, or `default` when absent or (reported) invalid.
    pub(super) fn duration(
        &mut self,
        path: &KeyPath,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match humantime::parse_duration(text.trim()) {
            Ok(duration) => duration,
            Err(err) => {
                self.report(
                    path,
                    format!("invalid duration `{text}`: {err}; write it like `5s`, `10m` or `3d`"),
                );
                default
            }
        }
    }

    /// Like `duration`, and reports a zero duration.
    fn positive_duration(
        &mut self,
        path: &KeyPath,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        let duration = self.duration(path, value, default);
        if duration.is_zero() {
            self.report(path, "must be longer than zero");
            return default;
        }
        duration
    }

    /// An integer within `range`, or `default` when absent or (reported) outside.
    fn in_range(
        &mut self,
        path: &KeyPath,
        value: Option<i64>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> i64 {
        match value {
            None => default,
            Some(value) if range.contains(&value) => value,
            Some(value) => {
                self.report(
                    path,
                    format!(
                        "`{value}` is out of range: give a number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }
}

fn problem_of(found: Found) -> Problem {
    Problem {
        line: found.line,
        key: found.path.to_string(),
        message: found.message,
    }
}

/// The directory relative paths of the config file are taken against.
fn config_dir(origin: &Path) -> PathBuf {
    let origin = std::path::absolute(origin).unwrap_or_else(|_| origin.to_path_buf());
    origin.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn build_cluster(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    cluster: Option<ClusterFile>,
    env: &dyn Fn(&str) -> Option<String>,
    password: Password,
) -> Option<ClusterConfig> {
    let Some(cluster) = cluster else {
        if !checker.is_refused(path) {
            checker.report(path, "missing `[cluster]` section");
        }
        return None;
    };

    let allow_insecure_http = cluster
        .allow_insecure_http
        .unwrap_or(defaults::ALLOW_INSECURE_HTTP);
    let endpoint_path = path.key("endpoint");
    let endpoint = checker
        .require(&endpoint_path, cluster.endpoint.as_deref())
        .and_then(|text| match parse_endpoint(text) {
            Err(why) => {
                checker.report(&endpoint_path, why);
                None
            }
            Ok(endpoint) if endpoint.scheme == Scheme::Http && !allow_insecure_http => {
                checker.report(
                    &endpoint_path,
                    format!(
                        "plain http endpoint `{text}` refused: set `allow_insecure_http = true` \
                         to send credentials in clear"
                    ),
                );
                None
            }
            Ok(endpoint) => Some(endpoint),
        });

    let user = build_user(checker, &path.key("user"), cluster.user.as_deref());
    let password = match password {
        Password::Resolve => resolve_password(checker, path, &cluster, env),
        Password::Skip => Secret::default(),
    };
    let ca_file = cluster
        .ca_file
        .as_deref()
        .and_then(|file| build_ca_file(checker, &path.key("ca_file"), file));
    let (client_cert, client_key) = build_client_identity(checker, path, &cluster);
    let ssl_mode = match cluster.ssl_mode {
        None => defaults::SSL_MODE,
        Some(SslModeFile::Required) => SslMode::Required,
        Some(SslModeFile::VerifyCa) => SslMode::VerifyCa,
        Some(SslModeFile::VerifyIdentity) => SslMode::VerifyIdentity,
    };
    let label_keep = checker.positive_duration(
        &path.key("label_keep"),
        cluster.label_keep.as_deref(),
        defaults::LABEL_KEEP,
    );
    let timeout = checker.positive_duration(
        &path.key("timeout"),
        cluster.timeout.as_deref(),
        defaults::TIMEOUT,
    );
    let redirect_map = build_redirect_map(
        checker,
        &path.key("redirect_map"),
        cluster.redirect_map.unwrap_or_default(),
    );

    Some(ClusterConfig {
        allow_insecure_http,
        ca_file,
        client_cert,
        client_key,
        endpoint: endpoint?,
        label_keep,
        password,
        redirect_map,
        ssl_mode,
        timeout,
        user: user?,
    })
}

/// The user goes into `Authorization: Basic user:password`, so a colon would split it wrongly.
fn build_user(checker: &mut Checker<'_>, path: &KeyPath, user: Option<&str>) -> Option<String> {
    let user = checker.require(path, user)?;
    let why = if user.is_empty() {
        "must not be empty"
    } else if user.contains(':') {
        "must not contain `:`, which separates user and password in basic auth"
    } else if user.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Some(user.to_owned());
    };
    checker.report(path, why);
    None
}

/// The CA bundle must be readable now and hold at least one certificate, so that a typo shows
/// at `sluice check` rather than as a TLS failure at the first load.
fn build_ca_file(checker: &mut Checker<'_>, path: &KeyPath, file: &Path) -> Option<PathBuf> {
    let file = checker.resolve_path(path, file)?;
    let shown = file.display();
    let why = match std::fs::read(&file) {
        Err(err) => format!("cannot read CA file `{shown}`: {}", describe_io(&err)),
        Ok(bytes) => {
            let mut certificates = 0;
            let mut bad = None;
            for item in CertificateDer::pem_slice_iter(&bytes) {
                match item {
                    Ok(_) => certificates += 1,
                    Err(err) => {
                        bad = Some(err);
                        break;
                    }
                }
            }
            match (bad, certificates) {
                (Some(err), _) => format!("CA file `{shown}` is not valid PEM: {err}"),
                (None, 0) => format!("CA file `{shown}` holds no PEM `CERTIFICATE` block"),
                (None, _) => return Some(file),
            }
        }
    };
    checker.report(path, why);
    None
}

/// `client_cert` and `client_key` come together. Both are read now, so that a typo shows at
/// `sluice check`; the key must be private to its owner, as the password file must, and its
/// content never reaches a message.
fn build_client_identity(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    cluster: &ClusterFile,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let (cert_key, key_key) = (path.key("client_cert"), path.key("client_key"));
    match (&cluster.client_cert, &cluster.client_key) {
        (None, None) => (None, None),
        (Some(_), None) => {
            checker.report(
                &cert_key,
                "`client_cert` needs `client_key`, the file of its private key",
            );
            (None, None)
        }
        (None, Some(_)) => {
            checker.report(
                &key_key,
                "`client_key` needs `client_cert`, the file of its certificate",
            );
            (None, None)
        }
        (Some(cert), Some(key)) => {
            let cert =
                checker.resolve_path(&cert_key, cert).filter(|file| {
                    match check_client_cert(file) {
                        Ok(()) => true,
                        Err(why) => {
                            checker.report(&cert_key, why);
                            false
                        }
                    }
                });
            let key =
                checker
                    .resolve_path(&key_key, key)
                    .filter(|file| match check_client_key(file) {
                        Ok(()) => true,
                        Err(why) => {
                            checker.report(&key_key, why);
                            false
                        }
                    });
            (cert, key)
        }
    }
}

fn check_client_cert(file: &Path) -> Result<(), String> {
    let shown = file.display();
    let bytes = std::fs::read(file).map_err(|err| {
        format!(
            "cannot read client certificate `{shown}`: {}",
            describe_io(&err)
        )
    })?;
    let mut certificates = 0;
    for item in CertificateDer::pem_slice_iter(&bytes) {
        item.map_err(|err| format!("client certificate `{shown}` is not valid PEM: {err}"))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(format!(
            "client certificate `{shown}` holds no PEM `CERTIFICATE` block"
        ));
    }
    Ok(())
}

fn check_client_key(file: &Path) -> Result<(), String> {
    let shown = file.display();
    let metadata = std::fs::metadata(file)
        .map_err(|err| format!("cannot read client key `{shown}`: {}", describe_io(&err)))?;
    ensure_private("client key", file, &metadata)?;
    let bytes = std::fs::read(file)
        .map_err(|err| format!("cannot read client key `{shown}`: {}", describe_io(&err)))?;
    // The PEM error says what kind of problem it is, never the key's bytes.
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(|_| ())
        .map_err(|err| format!("client key `{shown}` holds no usable PEM private key: {err}"))
}

fn build_redirect_map(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    map: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut normalized = BTreeMap::new();
    for (from, to) in map {
        let key = path.key(&from);
        let from_ok = normalize_host_port(&from)
            .map_err(|why| checker.report(&key, format!("advertised address: {why}")));
        let to_ok = normalize_host_port(&to)
            .map_err(|why| checker.report(&key, format!("replacement address: {why}")));
        let (Ok(from_norm), Ok(to_norm)) = (from_ok, to_ok) else {
            continue;
        };
        if normalized.insert(from_norm.clone(), to_norm).is_some() {
            checker.report(&key, format!("`{from_norm}` is mapped twice"));
        }
    }
    normalized
}

fn build_ledger(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    ledger: Option<LedgerFile>,
) -> LedgerConfig {
    let key = path.key("path");
    let given = ledger.and_then(|ledger| ledger.path);
    let resolved = match &given {
        Some(given) => checker.resolve_path(&key, given),
        None => Some(PathBuf::from(defaults::LEDGER_PATH)),
    };
    let path = resolved.unwrap_or_else(|| PathBuf::from(defaults::LEDGER_PATH));
    if path.is_file() {
        checker.report(
            &key,
            format!("`{}` is a file; the ledger is a directory", path.display()),
        );
    }
    LedgerConfig { path }
}

fn build_load(checker: &mut Checker<'_>, path: &KeyPath, load: Option<LoadFile>) -> LoadConfig {
    let load = load.unwrap_or_default();

    let max_in_flight = checker.in_range(
        &path.key("max_in_flight"),
        load.max_in_flight,
        defaults::MAX_IN_FLIGHT,
        1..=defaults::MAX_IN_FLIGHT_LIMIT,
    );
    let max_attempts = checker.in_range(
        &path.key("max_attempts"),
        load.max_attempts,
        defaults::MAX_ATTEMPTS,
        1..=i64::from(u32::MAX),
    );
    let rescan = checker.positive_duration(
        &path.key("rescan"),
        load.rescan.as_deref(),
        defaults::RESCAN,
    );
    let retry_initial = checker.positive_duration(
        &path.key("retry_initial"),
        load.retry_initial.as_deref(),
        defaults::RETRY_INITIAL,
    );
    let retry_max_path = path.key("retry_max");
    let mut retry_max = checker.duration(
        &retry_max_path,
        load.retry_max.as_deref(),
        defaults::RETRY_MAX,
    );
    if retry_max < retry_initial {
        checker.report(
            &retry_max_path,
            format!(
                "`{}` is shorter than `retry_initial` (`{}`)",
                humantime::format_duration(retry_max),
                humantime::format_duration(retry_initial)
            ),
        );
        retry_max = retry_initial;
    }
    let settle = checker.duration(
        &path.key("settle"),
        load.settle.as_deref(),
        defaults::SETTLE,
    );
    let shutdown_grace = checker.duration(
        &path.key("shutdown_grace"),
        load.shutdown_grace.as_deref(),
        defaults::SHUTDOWN_GRACE,
    );

    LoadConfig {
        // The ranges above keep both values within their target types; the fallbacks are
        // never taken.
        max_in_flight: usize::try_from(max_in_flight).unwrap_or(1),
        max_attempts: u32::try_from(max_attempts).unwrap_or(1),
        rescan,
        retry_initial,
        retry_max,
        settle,
        shutdown_grace,
    }
}

/// The metrics listener must be a loopback address with a port: the metrics are not secret,
/// but they tell anyone who can reach them what is loaded and when, and the service is not
/// meant to take connections from the network. A scraper on another host reads them through a
/// proxy on this one, or from `sluice once --metrics-file` via the node exporter.
fn build_metrics(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    metrics: Option<MetricsFile>,
) -> MetricsConfig {
    let key = path.key("listen");
    let Some(text) = metrics.and_then(|metrics| metrics.listen) else {
        return MetricsConfig::default();
    };
    let trimmed = text.trim();
    let localhost = trimmed
        .strip_prefix("localhost:")
        .map(|port| format!("127.0.0.1:{port}"));
    let parsed = localhost
        .as_deref()
        .unwrap_or(trimmed)
        .parse::<std::net::SocketAddr>();
    let why = match parsed {
        Err(_) => format!(
            "`{text}` is not an address and port: write it like `127.0.0.1:9833` or `[::1]:9833`"
        ),
        Ok(address) if !address.ip().is_loopback() => format!(
            "`{text}` is not a loopback address: metrics are served on 127.0.0.1 or ::1 only"
        ),
        Ok(address) if address.port() == 0 => format!("`{text}` needs a port other than 0"),
        Ok(address) => {
            return MetricsConfig {
                listen: Some(address),
            };
        }
    };
    checker.report(&key, why);
    MetricsConfig::default()
}
