//! `sluice doctor`: reach the cluster the way loads will, one check per line, and say how to
//! fix the first thing that fails.
//!
//! The checks run in the order a load needs them: resolve the endpoint, connect, TLS at the
//! configured `ssl_mode` (with the certificate shown), the credentials, then each watch's
//! database and table, and where the FE redirects its loads. A failure stops the checks that
//! depend on it: nothing past a failed handshake can be learnt. No check loads anything; see
//! `upload::probe` for why each request is safe.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use reqwest::Url;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{ClusterConfig, Config, Scheme, SslMode};
use crate::tls::{self, CertificateInfo, HandshakeFailure};
use crate::upload::{DatabaseCheck, RedirectCheck, TableCheck, UploadError, Uploader};

/// Longest wait for one TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to listen after the handshake for a refusal of the client certificate, which
/// TLS 1.3 servers send only then.
const ALERT_WAIT: Duration = Duration::from_millis(300);

/// A certificate this close to its end is worth a warning.
const EXPIRY_WARNING_DAYS: i64 = 21;

/// How one check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, not `write_str`, so that the report's column widths apply.
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// The kind of problem a failed check shows, in the order checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// The endpoint's name does not resolve, or nothing answers on its port.
    Network,
    /// The handshake failed: unknown issuer, wrong name, expired, client certificate.
    Tls,
    /// The cluster refused the user, or the user may not load into a table.
    Credentials,
    /// A watch's database or table does not exist.
    Target,
    /// The FE's redirect goes somewhere that is refused or cannot be reached.
    Redirect,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What was checked: `resolve`, `connect`, `tls`, `credentials`, `database`, `table`,
    /// `redirect`.
    pub name: &'static str,
    pub detail: String,
    /// What to do about it, for warnings and failures.
    pub fix: Option<String>,
    /// Set for failures.
    pub class: Option<Class>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {:<11}  {}", self.status, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every check made, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// The class of the first failed check, if any failed.
    pub fn first_failure(&self) -> Option<Class> {
        self.checks.iter().find_map(|c| c.class)
    }
}

/// Runs every check against `config`'s cluster, writing each line to `out` as it is made.
///
/// Never loads anything. Safe to cancel: it only holds connections of its own.
///
/// # Errors
///
/// Only when `out` cannot be written; every problem with the cluster is a line of the report.
pub async fn diagnose(config: &Config, out: &mut dyn Write) -> io::Result<Report> {
    let mut doctor = Doctor {
        report: Report::default(),
        out,
    };
    doctor.run(config).await?;
    Ok(doctor.report)
}

struct Doctor<'o> {
    report: Report,
    out: &'o mut dyn Write,
}

impl Doctor<'_> {
    async fn run(&mut self, config: &Config) -> io::Result<()> {
        let cluster = &config.cluster;
        let endpoint = &cluster.endpoint;
        if !self
            .reach(cluster, &endpoint.host, endpoint.port, endpoint.scheme)
            .await?
        {
            return Ok(());
        }

        let uploader = match Uploader::new(cluster) {
            Ok(uploader) => uploader,
            Err(err) => {
                let fix = "fix the TLS files named in `[cluster]` (`sluice check` tells more)";
                return self.fail("credentials", Class::Tls, err.to_string(), fix);
            }
        };
        let mut databases = BTreeMap::new();
        let first = &config.watches[0].database;
        match uploader.check_database(first).await {
            Ok(found) => {
                self.ok("credentials", format!("user `{}` accepted", cluster.user))?;
                databases.insert(first.clone(), found);
            }
            Err(UploadError::AuthRefused { message, .. }) => {
                let detail = format!("the cluster refused user `{}`: {message}", cluster.user);
                let fix = "check `cluster.user` and the password (`password_file`, \
                           `password_env` or `password_credential`)";
                return self.fail("credentials", Class::Credentials, detail, fix);
            }
            Err(err) => {
                let detail = format!("could not be checked: {err}");
                let fix = "check that `cluster.endpoint` is the FE's HTTP port (or its proxy)";
                return self.fail("credentials", Class::Credentials, detail, fix);
            }
        }

        let mut reached = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for watch in &config.watches {
            let (database, table) = (watch.database.as_str(), watch.table.as_str());
            if !seen.insert((database, table)) {
                continue;
            }
            self.check_target(
                &uploader,
                cluster,
                &mut databases,
                &mut reached,
                database,
                table,
            )
            .await?;
        }
        Ok(())
    }

    /// Resolve, connect and (for https) handshake with `host:port`, one line each. Returns
    /// whether every step passed.
    async fn reach(
        &mut self,
        cluster: &ClusterConfig,
        host: &str,
        port: u16,
        scheme: Scheme,
    ) -> io::Result<bool> {
        let shown = authority(host, port);
        let addrs = match resolve(host, port).await {
            Ok(addrs) => addrs,
            Err(why) => {
                let fix = "check the host name in `cluster.endpoint` and this host's DNS";
                self.fail("resolve", Class::Network, format!("`{shown}`: {why}"), fix)?;
                return Ok(false);
            }
        };
        let listed: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        self.ok("resolve", format!("`{shown}` is {}", listed.join(", ")))?;

        let (tcp, addr, took) = match connect(&addrs).await {
            Ok(connected) => connected,
            Err(why) => {
                let fix = "check the port in `cluster.endpoint`, that the FE (or proxy) runs, \
                           and the firewalls between";
                self.fail("connect", Class::Network, format!("`{shown}`: {why}"), fix)?;
                return Ok(false);
            }
        };
        self.ok(
            "connect",
            format!("`{addr}` accepted in {} ms", took.as_millis()),
        )?;

        if scheme == Scheme::Http {
            self.warn(
                "tls",
                "none: plain http (`allow_insecure_http = true`), the password and the rows \
                 travel in clear"
                    .to_owned(),
                "use an https endpoint",
            )?;
            return Ok(true);
        }
        match handshake(cluster, host, tcp).await {
            Ok(info) => {
                self.report_certificate(cluster.ssl_mode, info.as_ref())?;
                Ok(true)
            }
            Err((failure, info)) => {
                let shown_cert = info
                    .map(|i| format!(" ({})", describe(&i)))
                    .unwrap_or_default();
                let detail = format!(
                    "{} refused `{shown}`: {failure}{shown_cert}",
                    mode_name(cluster.ssl_mode)
                );
                self.fail("tls", Class::Tls, detail, failure.fix())?;
                Ok(false)
            }
        }
    }

    fn report_certificate(
        &mut self,
        mode: SslMode,
        info: Option<&CertificateInfo>,
    ) -> io::Result<()> {
        let shown = info
            .map(describe)
            .unwrap_or_else(|| "no certificate seen".into());
        let days = info.map(|i| i.days_to_expiry(SystemTime::now()));
        match mode {
            SslMode::Required => self.warn(
                "tls",
                format!("required: encrypted, certificate not verified ({shown})"),
                "set `ssl_mode = \"verify_identity\"` (with `ca_file` for a private CA)",
            ),
            _ if days.is_some_and(|d| d < EXPIRY_WARNING_DAYS) => self.warn(
                "tls",
                format!("{}: verified ({shown})", mode_name(mode)),
                "renew the server's certificate soon",
            ),
            SslMode::VerifyCa => self.ok(
                "tls",
                format!("verify_ca: chain verified, name not checked ({shown})"),
            ),
            SslMode::VerifyIdentity => self.ok(
                "tls",
                format!("verify_identity: chain and name verified ({shown})"),
            ),
        }
    }

    async fn check_target(
        &mut self,
        uploader: &Uploader,
        cluster: &ClusterConfig,
        databases: &mut BTreeMap<String, DatabaseCheck>,
        reached: &mut BTreeMap<String, bool>,
        database: &str,
        table: &str,
    ) -> io::Result<()> {
        let target = format!("{database}.{table}");
        let found = match databases.get(database) {
            Some(found) => Ok(found.clone()),
            None => uploader.check_database(database).await,
        };
        match found {
            Ok(DatabaseCheck::Exists) => self.ok("database", format!("`{database}` exists"))?,
            Ok(DatabaseCheck::Missing { message }) => {
                let fix = format!(
                    "create database `{database}`, or correct `database` of its `[[watch]]`"
                );
                databases.insert(
                    database.to_owned(),
                    DatabaseCheck::Missing {
                        message: message.clone(),
                    },
                );
                return self.fail(
                    "database",
                    Class::Target,
                    format!("`{database}`: {message}"),
                    &fix,
                );
            }
            Err(err) => {
                return self.fail(
                    "database",
                    Class::Target,
                    format!("`{database}` could not be checked: {err}"),
                    "check the FE's log for the reason",
                );
            }
        }
        databases.insert(database.to_owned(), DatabaseCheck::Exists);

        match uploader.check_table(database, table).await {
            Ok(TableCheck::Exists { columns }) => {
                self.ok("table", format!("`{target}` exists, {columns} columns"))?;
            }
            Ok(TableCheck::Missing { message }) => {
                let fix = format!("create table `{target}`, or correct `table` of its `[[watch]]`");
                return self.fail(
                    "table",
                    Class::Target,
                    format!("`{target}`: {message}"),
                    &fix,
                );
            }
            Ok(TableCheck::Unknown { reason }) => self.warn(
                "table",
                format!("`{target}` could not be checked: {reason}"),
                "none needed if loads work; grant SELECT to let doctor check",
            )?,
            Err(err) => {
                return self.fail(
                    "table",
                    Class::Target,
                    format!("`{target}` could not be checked: {err}"),
                    "check the FE's log for the reason",
                );
            }
        }

        self.check_redirect(uploader, cluster, reached, database, table)
            .await
    }

    async fn check_redirect(
        &mut self,
        uploader: &Uploader,
        cluster: &ClusterConfig,
        reached: &mut BTreeMap<String, bool>,
        database: &str,
        table: &str,
    ) -> io::Result<()> {
        let target = format!("{database}.{table}");
        let (advertised, url) = match uploader.check_redirect(database, table).await {
            Ok(RedirectCheck::Redirect { advertised, target }) => (advertised, target),
            Ok(RedirectCheck::Direct { .. }) => {
                return self.ok(
                    "redirect",
                    format!("`{target}`: the endpoint takes loads itself (no redirect)"),
                );
            }
            Ok(RedirectCheck::NoAnswer { waited }) => {
                return self.warn(
                    "redirect",
                    format!(
                        "`{target}`: no answer within {} without a body; the endpoint reads \
                         the whole body before it answers, so the redirect cannot be checked \
                         without loading",
                        humantime::format_duration(waited)
                    ),
                    "none needed if loads work",
                );
            }
            Err(UploadError::InsecureRedirect { location }) => {
                let key = url_authority(&location).unwrap_or_else(|| location.clone());
                let detail = format!("`{target}`: the FE redirects to plain http `{location}`");
                let fix = format!(
                    "map `\"{key}\" = \"<reachable https host:port>\"` in \
                     `[cluster.redirect_map]`, or set `allow_insecure_http = true` to send \
                     the password and rows in clear"
                );
                return self.fail("redirect", Class::Redirect, detail, &fix);
            }
            Err(UploadError::AuthRefused { message, .. }) => {
                let detail = format!("`{target}`: loads refused: {message}");
                let fix = format!("grant INSERT on `{target}` to `{}`", cluster.user);
                return self.fail("redirect", Class::Credentials, detail, &fix);
            }
            Err(err) => {
                let detail = format!("`{target}`: {err}");
                return self.fail(
                    "redirect",
                    Class::Redirect,
                    detail,
                    "check the FE's log for the reason",
                );
            }
        };

        let mapped = url_authority(&advertised) != url_authority(url.as_str())
            || !advertised.starts_with(url.scheme());
        let shown = if !mapped {
            format!("`{advertised}`")
        } else {
            format!("`{advertised}`, mapped to `{url}`")
        };
        let key = url_authority(url.as_str()).unwrap_or_default();
        if let Some(&ok) = reached.get(&key) {
            return if ok {
                self.ok("redirect", format!("`{target}`: {shown}, reachable"))
            } else {
                self.fail(
                    "redirect",
                    Class::Redirect,
                    format!("`{target}`: {shown}, not reachable (see above)"),
                    "see above",
                )
            };
        }
        let ok = match reach_quietly(cluster, &url).await {
            Ok(how) => {
                self.ok("redirect", format!("`{target}`: {shown}, {how}"))?;
                true
            }
            Err((why, fix)) => {
                self.fail(
                    "redirect",
                    Class::Redirect,
                    format!("`{target}`: {shown}, {why}"),
                    &fix,
                )?;
                false
            }
        };
        reached.insert(key, ok);
        Ok(())
    }

    fn ok(&mut self, name: &'static str, detail: String) -> io::Result<()> {
        self.push(Check {
            status: Status::Ok,
            name,
            detail,
            fix: None,
            class: None,
        })
    }

    fn warn(&mut self, name: &'static str, detail: String, fix: &str) -> io::Result<()> {
        self.push(Check {
            status: Status::Warn,
            name,
            detail,
            fix: Some(fix.to_owned()),
            class: None,
        })
    }

    fn fail(
        &mut self,
        name: &'static str,
        class: Class,
        detail: String,
        fix: &str,
    ) -> io::Result<()> {
        self.push(Check {
            status: Status::Fail,
            name,
            detail,
            fix: Some(fix.to_owned()),
            class: Some(class),
        })
    }

    fn push(&mut self, check: Check) -> io::Result<()> {
        writeln!(self.out, "{check}")?;
        self.out.flush()?;
        self.report.checks.push(check);
        Ok(())
    }
}

/// Resolve, connect and handshake with a redirect target, as one step: `Ok(what was
/// verified)`, or `Err((why, fix))`.
async fn reach_quietly(cluster: &ClusterConfig, url: &Url) -> Result<String, (String, String)> {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(80);
    let key = authority(bare, port);
    let unreachable = || {
        format!(
            "map the advertised address to one this host can reach in `[cluster.redirect_map]` \
             (now `{key}`)"
        )
    };
    let addrs = resolve(bare, port)
        .await
        .map_err(|why| (format!("cannot resolve `{key}`: {why}"), unreachable()))?;
    let (tcp, addr, _) = connect(&addrs)
        .await
        .map_err(|why| (format!("cannot connect to `{key}`: {why}"), unreachable()))?;
    if url.scheme() != "https" {
        return Ok(format!("reachable at `{addr}` over plain http"));
    }
    match handshake(cluster, bare, tcp).await {
        Ok(_) => Ok(format!("reachable, TLS {}", mode_name(cluster.ssl_mode))),
        Err((failure, info)) => {
            let shown = info
                .map(|i| format!(" ({})", describe(&i)))
                .unwrap_or_default();
            Err((
                format!("TLS with `{key}` refused: {failure}{shown}"),
                failure.fix().to_owned(),
            ))
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let found = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| e.to_string())?;
    let mut addrs: Vec<SocketAddr> = found.collect();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("no addresses".to_owned());
    }
    Ok(addrs)
}

/// The first address that accepts, with how long it took; else every address's error.
async fn connect(addrs: &[SocketAddr]) -> Result<(TcpStream, SocketAddr, Duration), String> {
    let mut errors = Vec::new();
    for &addr in addrs {
        let start = Instant::now();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok((tcp, addr, start.elapsed())),
            Ok(Err(err)) => errors.push(format!("{addr}: {err}")),
            Err(_) => errors.push(format!(
                "{addr}: no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            )),
        }
    }
    Err(errors.join("; "))
}

/// A handshake at the configured mode over `tcp`: the server's certificate when accepted, or
/// the failure and the certificate it presented.
async fn handshake(
    cluster: &ClusterConfig,
    host: &str,
    tcp: TcpStream,
) -> Result<Option<CertificateInfo>, (HandshakeFailure, Option<CertificateInfo>)> {
    let other = |text: String| (HandshakeFailure::Other(text), None);
    let (config, record) = tls::inspecting_config(cluster).map_err(|e| other(e.to_string()))?;
    let name = tls::server_name(host).map_err(|e| other(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let failed = |err: io::Error| {
        let failure = tls::find_handshake_failure(&err)
            .unwrap_or_else(|| HandshakeFailure::Other(err.to_string()));
        (failure, record.end_entity())
    };
    let mut stream =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(failed(err)),
            Err(_) => return Err(other("no handshake within 10s".to_owned())),
        };
    // A TLS 1.3 server refuses a client certificate after our side finished: listen briefly.
    let mut byte = [0u8; 1];
    if let Ok(Err(err)) = tokio::time::timeout(ALERT_WAIT, stream.read(&mut byte)).await {
        return Err(failed(err));
    }
    Ok(record.end_entity())
}

fn describe(info: &CertificateInfo) -> String {
    let days = info.days_to_expiry(SystemTime::now());
    let expiry = if days < 0 {
        format!("expired {} days ago", -days)
    } else {
        format!("expires in {days} days")
    };
    let names = if info.names.is_empty() {
        "none".to_owned()
    } else {
        info.names.join(", ")
    };
    format!(
        "subject {}; issuer {}; names {names}; {expiry}",
        info.subject, info.issuer
    )
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Required => "required",
        SslMode::VerifyCa => "verify_ca",
        SslMode::VerifyIdentity => "verify_identity",
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` of a URL, as `redirect_map` keys are written.
fn url_authority(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    let host = url.host_str()?;
    Some(format!("{host}:{}", url.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_status_name_detail_and_fix() {
        let check = Check {
            status: Status::Fail,
            name: "tls",
            detail: "unknown issuer".into(),
            fix: Some("set `cluster.ca_file`".into()),
            class: Some(Class::Tls),
        };
        assert_eq!(
            check.to_string(),
            "FAIL  tls          unknown issuer; fix: set `cluster.ca_file`"
        );
    }

    #[test]
    fn map_keys_use_the_default_port() {
        assert_eq!(
            url_authority("http://10.0.0.12/api/x").as_deref(),
            Some("10.0.0.12:80")
        );
        assert_eq!(
            url_authority("http://be:8040/api/x").as_deref(),
            Some("be:8040")
        );
    }
}
