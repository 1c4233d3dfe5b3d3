//! The Stream Load client: the only module that speaks HTTP to the cluster.
//!
//! `Uploader::load` makes one attempt at one file: a PUT with `Expect: 100-continue` whose body
//! waits for the server's word, redirects followed by hand (credentials re-sent, body replayed
//! from offset 0, https→http refused unless allowed, `redirect_map` applied), and the answer
//! parsed into a `Reply` whose `verdict` tells the caller what to do. It never retries by
//! itself. `label_state` and `fetch_error_rows` serve the resolution of unknown outcomes and
//! the report of refused files. See STREAMLOAD.md "What this means for sluice".

mod body;
mod exchange;
mod probe;
mod redirect;
mod reply;

use std::error::Error as StdError;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderValue;
use reqwest::Url;
use tokio_rustls::TlsConnector;

pub use probe::{DatabaseCheck, PROBE_LABEL, RedirectCheck, TableCheck};
pub use reply::{Dialect, LabelState, Reply, Verdict};

use self::body::BodyReport;
use self::exchange::Hop;
use self::redirect::{RedirectPolicy, Refusal, is_redirect, scheme_name};
use crate::config::{ClusterConfig, Scheme, SslMode};
use crate::tls::{self, TlsError};

/// Most redirects followed in one attempt (FE → leader FE → BE needs two).
pub const MAX_REDIRECTS: usize = 5;

/// Upper bound of one label state query or error-row fetch, whatever `cluster.timeout` says.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The Stream Load client of one cluster. Cheap to clone; clones share the TLS configuration
/// and the HTTP client.
#[derive(Clone)]
pub struct Uploader {
    inner: Arc<Inner>,
}

struct Inner {
    /// `Basic base64(user:password)`, marked sensitive: hyper and `Debug` print it as such.
    authorization: HeaderValue,
    /// For `label_state` and `fetch_error_rows`; never follows redirects by itself.
    client: reqwest::Client,
    /// `scheme://host:port/` of the configured endpoint.
    endpoint: Url,
    password: crate::config::Secret,
    policy: RedirectPolicy,
    timeout: Duration,
    tls: TlsConnector,
    user: String,
}

/// One file to load under one label.
#[derive(Debug)]
pub struct LoadRequest<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub label: &'a str,
    /// Stream Load headers (`column_separator`, `[watch.headers]`), already merged. Names that
    /// sluice sets itself (`label`, `Authorization`, `Expect`, `Content-Length`, `Host`,
    /// `Connection`, `Transfer-Encoding`) are ignored.
    pub headers: &'a [(String, String)],
    /// The claimed file. Read with positioned reads, so each hop can send it from offset 0.
    pub file: Arc<File>,
    /// Bytes to send (the digested length); the Content-Length.
    pub len: u64,
    /// The digest the bytes must have. When set, the body is hashed as it is read and the
    /// last chunk is withheld if the bytes differ, so that the cluster sees a short body and
    /// commits nothing: a file changed after it was digested is never loaded under the old
    /// digest's label.
    pub sha256: Option<&'a str>,
}

/// Why an attempt (or a query) ended without an answer from the cluster.
///
/// Messages carry their cause, so each is complete when printed alone.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("credentials refused by `{url}`: {message}")]
    AuthRefused { url: String, message: String },
    #[error("bad redirect from `{url}`: {reason}")]
    BadRedirect { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("cannot connect to `{addr}`: {cause}")]
    Connect { addr: String, cause: io::Error },
    #[error("exchange with `{addr}` failed: {cause}")]
    Exchange {
        addr: String,
        body_may_have_been_sent: bool,
        cause: String,
    },
    #[error("the file ended after {read} of the {expected} bytes to send: it changed")]
    FileChanged {
        expected: u64,
        read: u64,
        body_may_have_been_sent: bool,
    },
    #[error("the file's bytes changed after it was digested: not loaded under the old label")]
    FileAltered { body_may_have_been_sent: bool },
    #[error("`{url}` answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error(
        "refused to fetch `{url}` over plain http; set `cluster.allow_insecure_http` or map it in `cluster.redirect_map`"
    )]
    InsecureErrorUrl { url: String },
    #[error(
        "refused to follow the redirect to `{location}` over plain http; set `cluster.allow_insecure_http` or map it in `cluster.redirect_map`"
    )]
    InsecureRedirect { location: String },
    #[error("invalid request header `{name}`")]
    InvalidHeader { name: String },
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("label state of `{label}` unavailable: {message}")]
    LabelState { label: String, message: String },
    #[error("reading the file failed: {cause}")]
    ReadFile {
        cause: io::Error,
        body_may_have_been_sent: bool,
    },
    #[error("request to `{url}` failed: {cause}")]
    Request { url: String, cause: String },
    #[error("no answer within {}", humantime::format_duration(*after))]
    Timeout {
        after: Duration,
        body_may_have_been_sent: bool,
    },
    #[error("TLS handshake with `{addr}` failed: {}", describe_tls(cause))]
    Tls { addr: String, cause: io::Error },
    #[error(transparent)]
    TlsSetup(#[from] TlsError),
    #[error("more than {MAX_REDIRECTS} redirects, the last to `{location}`")]
    TooManyRedirects { location: String },
}

impl UploadError {
    /// Whether any byte of the body may have reached a server: if so the outcome is unknown
    /// and must be resolved by label. False for failures before the body (connect, TLS,
    /// refused redirects) and for every query error.
    pub fn body_may_have_been_sent(&self) -> bool {
        match self {
            UploadError::Exchange {
                body_may_have_been_sent,
                ..
            }
            | UploadError::FileChanged {
                body_may_have_been_sent,
                ..
            }
            | UploadError::FileAltered {
                body_may_have_been_sent,
            }
            | UploadError::ReadFile {
                body_may_have_been_sent,
                ..
            }
            | UploadError::Timeout {
                body_may_have_been_sent,
                ..
            } => *body_may_have_been_sent,
            _ => false,
        }
    }
}

impl Uploader {
    /// The client of `cluster`: its TLS configuration, endpoint, credentials and limits.
    ///
    /// Logs a warning, at every start, when `ssl_mode = "required"` leaves the server
    /// unverified or `allow_insecure_http` lets credentials travel in clear.
    ///
    /// # Errors
    ///
    /// `TlsSetup` when the TLS configuration cannot be built (see `tls::client_config`),
    /// `Client` when the HTTP client cannot.
    pub fn new(cluster: &ClusterConfig) -> Result<Uploader, UploadError> {
        warn_of_weak_transport(cluster);
        let tls_config = tls::client_config(cluster)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls_config))
            .redirect(reqwest::redirect::Policy::none())
            // Loads connect directly; label queries must reach the same place the same way.
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| UploadError::Client(error_chain(&e)))?;

        let ep = &cluster.endpoint;
        let host = if ep.host.contains(':') && !ep.host.starts_with('[') {
            format!("[{}]", ep.host)
        } else {
            ep.host.clone()
        };
        let base = format!("{}://{host}:{}/", scheme_name(ep.scheme), ep.port);
        let endpoint = Url::parse(&base).map_err(|e| UploadError::InvalidUrl {
            url: base.clone(),
            reason: e.to_string(),
        })?;

        let credentials = format!("{}:{}", cluster.user, cluster.password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        let mut authorization =
            HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
                UploadError::InvalidHeader {
                    name: "Authorization".into(),
                }
            })?;
        authorization.set_sensitive(true);

        Ok(Uploader {
            inner: Arc::new(Inner {
                authorization,
                client,
                endpoint,
                password: cluster.password.clone(),
                policy: RedirectPolicy {
                    allow_insecure_http: cluster.allow_insecure_http,
                    endpoint_scheme: ep.scheme,
                    map: cluster.redirect_map.clone(),
                },
                timeout: cluster.timeout,
                tls: TlsConnector::from(tls_config),
                user: cluster.user.clone(),
            }),
        })
    }

    /// One attempt: PUT the file under `req.label`, following redirects. Never retries.
    ///
    /// The whole attempt, every hop included, is bounded by `cluster.timeout`. Cancel-safe:
    /// dropping the future drops the connection (the server then sees a short body).
    ///
    /// # Errors
    ///
    /// Every way the attempt can end without a final answer; `body_may_have_been_sent` tells
    /// whether the outcome is unknown. An answer, whatever it says, is `Ok(Reply)`.
    pub async fn load(&self, req: &LoadRequest<'_>) -> Result<Reply, UploadError> {
        let report = Arc::new(BodyReport::default());
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, self.load_hops(req, &report)).await {
            Ok(result) => result,
            Err(_) => Err(UploadError::Timeout {
                after: timeout,
                body_may_have_been_sent: report.started(),
            }),
        }
    }

    async fn load_hops(
        &self,
        req: &LoadRequest<'_>,
        report: &Arc<BodyReport>,
    ) -> Result<Reply, UploadError> {
        let mut url = self.api_url(&[req.database, req.table, "_stream_load"], None)?;
        for hop in 0..=MAX_REDIRECTS {
            report.reset();
            let answer = exchange::put(Hop {
                url: &url,
                tls: &self.inner.tls,
                authorization: &self.inner.authorization,
                request: req,
                report: report.clone(),
            })
            .await?;

            if !is_redirect(answer.status) {
                tracing::trace!(label = req.label, status = answer.status, "load answered");
                return Ok(Reply::parse(answer.status, answer.body));
            }
            let location = answer.location.ok_or_else(|| UploadError::BadRedirect {
                url: url.to_string(),
                reason: format!("HTTP {} without a Location", answer.status),
            })?;
            if hop == MAX_REDIRECTS {
                return Err(UploadError::TooManyRedirects { location });
            }
            url = self.follow(&url, &location)?;
            tracing::debug!(label = req.label, status = answer.status, to = %url, "load redirected");
        }
        // The loop returns on its last hop, answer or redirect.
        Err(UploadError::TooManyRedirects {
            location: url.to_string(),
        })
    }

    /// The state of the latest transaction under `label` in `database` (`get_load_state`),
    /// following redirects to the leader FE with the credentials.
    ///
    /// # Errors
    ///
    /// `AuthRefused` on 401/403, `LabelState` when the cluster answered without a state (an
    /// unknown database, say), `HttpStatus` on other non-2xx answers, and the transport errors.
    pub async fn label_state(
        &self,
        database: &str,
        label: &str,
    ) -> Result<LabelState, UploadError> {
        let mut url = self.api_url(&[database, "get_load_state"], Some(("label", label)))?;
        for hop in 0..=MAX_REDIRECTS {
            let response = self
                .inner
                .client
                .get(url.clone())
                .basic_auth(&self.inner.user, Some(self.inner.password.expose()))
                .timeout(self.query_timeout())
                .send()
                .await
                .map_err(|e| request_error(&url, &e))?;
            let status = response.status().as_u16();

            if is_redirect(status) {
                let location = location_of(&response).ok_or_else(|| UploadError::BadRedirect {
                    url: url.to_string(),
                    reason: format!("HTTP {status} without a Location"),
                })?;
                if hop == MAX_REDIRECTS {
                    return Err(UploadError::TooManyRedirects { location });
                }
                url = self.follow(&url, &location)?;
                continue;
            }

            let body = read_limited(response, exchange::MAX_REPLY_BYTES)
                .await
                .map_err(|e| request_error(&url, &e))?;
            if status == 401 || status == 403 {
                let reply = Reply::parse(status, body);
                return Err(UploadError::AuthRefused {
                    url: url.to_string(),
                    message: reply.message,
                });
            }
            if !(200..300).contains(&status) {
                return Err(UploadError::HttpStatus {
                    url: url.to_string(),
                    status,
                });
            }
            return reply::parse_label_state(&body).map_err(|message| UploadError::LabelState {
                label: label.to_owned(),
                message,
            });
        }
        Err(UploadError::TooManyRedirects {
            location: url.to_string(),
        })
    }

    /// At most `max_bytes` of the rejected rows at `url` (a reply's `ErrorURL`): a plain GET
    /// without credentials, the address rewritten by `redirect_map`. Plain http is refused
    /// from an https endpoint unless allowed, as for redirects: the rows are the file's data.
    ///
    /// # Errors
    ///
    /// `InvalidUrl`, `InsecureErrorUrl`, `HttpStatus` on a non-2xx answer, transport errors.
    pub async fn fetch_error_rows(
        &self,
        url: &str,
        max_bytes: usize,
    ) -> Result<String, UploadError> {
        let parsed = Url::parse(url).map_err(|e| UploadError::InvalidUrl {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let target = self.inner.policy.rewrite(parsed).map_err(|r| match r {
            Refusal::Invalid(reason) | Refusal::Insecure(reason) => UploadError::InvalidUrl {
                url: url.to_owned(),
                reason,
            },
        })?;
        let policy = &self.inner.policy;
        if target.scheme() == "http"
            && policy.endpoint_scheme == Scheme::Https
            && !policy.allow_insecure_http
        {
            return Err(UploadError::InsecureErrorUrl {
                url: target.to_string(),
            });
        }

        let response = self
            .inner
            .client
            .get(target.clone())
            .timeout(self.query_timeout())
            .send()
            .await
            .map_err(|e| request_error(&target, &e))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(UploadError::HttpStatus {
                url: target.to_string(),
                status,
            });
        }
        read_limited(response, max_bytes)
            .await
            .map_err(|e| request_error(&target, &e))
    }

    /// `endpoint/api/<segments...>[?key=value]`, each segment percent-encoded.
    fn api_url(&self, segments: &[&str], query: Option<(&str, &str)>) -> Result<Url, UploadError> {
        let mut url = self.inner.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| UploadError::InvalidUrl {
                url: self.inner.endpoint.to_string(),
                reason: "cannot be a base".into(),
            })?
            .clear()
            .push("api")
            .extend(segments);
        if let Some((key, value)) = query {
            url.query_pairs_mut().append_pair(key, value);
        }
        Ok(url)
    }

    fn follow(&self, current: &Url, location: &str) -> Result<Url, UploadError> {
        self.inner
            .policy
            .follow(current, location)
            .map_err(|refusal| match refusal {
                Refusal::Insecure(location) => UploadError::InsecureRedirect { location },
                Refusal::Invalid(reason) => UploadError::BadRedirect {
                    url: current.to_string(),
                    reason,
                },
            })
    }

    fn query_timeout(&self) -> Duration {
        self.inner.timeout.min(QUERY_TIMEOUT)
    }
}

impl fmt::Debug for Uploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploader")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("user", &self.inner.user)
            .field("password", &self.inner.password)
            .field("redirect_map", &self.inner.policy.map)
            .field(
                "allow_insecure_http",
                &self.inner.policy.allow_insecure_http,
            )
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// The warnings of a transport that does not protect the credentials fully, said at every start
/// so that they cannot be forgotten in an old log.
fn warn_of_weak_transport(cluster: &ClusterConfig) {
    let endpoint = &cluster.endpoint;
    if endpoint.scheme == Scheme::Https && cluster.ssl_mode == SslMode::Required {
        tracing::warn!(
            %endpoint,
            "ssl_mode = \"required\": the connection is encrypted but the server's certificate is \
             not verified, so anyone on the path can pose as the cluster and take the password; \
             use `verify_identity` (with `ca_file` for a private CA)"
        );
    }
    if endpoint.scheme == Scheme::Http {
        tracing::warn!(
            %endpoint,
            "plain http endpoint (allow_insecure_http = true): the password and the rows travel \
             in clear"
        );
    } else if cluster.allow_insecure_http {
        tracing::warn!(
            %endpoint,
            "allow_insecure_http = true: redirects to plain http are followed, and the password \
             and the rows then travel in clear"
        );
    }
}

/// A handshake error in an operator's words, with the fix, when rustls said which check
/// failed; else the error as it is.
fn describe_tls(cause: &io::Error) -> String {
    match tls::find_handshake_failure(cause) {
        Some(failure) => format!("{failure}; {}", failure.fix()),
        None => cause.to_string(),
    }
}

fn location_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get(http::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// At most `max_bytes` of a response body, as text (invalid UTF-8 replaced).
async fn read_limited(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<String, reqwest::Error> {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < max_bytes {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let room = max_bytes - buf.len();
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn request_error(url: &Url, err: &reqwest::Error) -> UploadError {
    let cause = match tls::find_handshake_failure(err) {
        Some(failure) => format!("TLS handshake failed: {failure}; {}", failure.fix()),
        None => error_chain(err),
    };
    UploadError::Request {
        url: url.to_string(),
        cause,
    }
}

/// An error and its sources in one line (`a: b: c`), skipping a source already contained in
/// the text before it.
pub(crate) fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
