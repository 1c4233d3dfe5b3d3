//! Requests that load nothing, for `sluice doctor`: do the credentials work, does a database
//! and a table exist, where does the FE send a load.
//!
//! None of them may start a load. DESIGN.md explains why a Stream Load with an empty body is
//! never a probe: behind a proxy that follows the redirect itself it is a real load. The
//! redirect check therefore sends the head of a load under [`PROBE_LABEL`], which the cluster's
//! label rule refuses before any transaction begins, promises one byte of body and never sends
//! it: even a server that ignored the label could only see a short body and abort.

use std::convert::Infallible;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Version};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use serde_json::Value;

use super::exchange::{self, authority};
use super::redirect::is_redirect;
use super::{Reply, UploadError, Uploader, read_limited, request_error};

/// The label of every probe. It holds `.`, which the cluster's label rule `^[-\w]{1,128}$`
/// forbids (the FE checks it before a transaction begins), so no load can ever have used it
/// and none can start under it.
pub const PROBE_LABEL: &str = "sluice.doctor.probe";

/// How long the redirect check waits for an answer to a head without its body. An FE answers
/// at once; a proxy that reads the whole body before answering never does.
const REDIRECT_WAIT: Duration = Duration::from_secs(5);

/// What `get_load_state` said of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseCheck {
    Exists,
    /// The cluster's words, e.g. `unknown database, database=sales`.
    Missing {
        message: String,
    },
}

/// What `GET /api/{db}/{table}/_schema` said of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableCheck {
    Exists {
        columns: usize,
    },
    /// The cluster's words, e.g. `Table [orders] does not exists`.
    Missing {
        message: String,
    },
    /// The schema could not be read: the user lacks SELECT (loads need only INSERT), or the
    /// endpoint does not offer the route (a proxy, another version). Says which.
    Unknown {
        reason: String,
    },
}

/// Where the endpoint sends a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedirectCheck {
    /// The endpoint answered the head itself (a proxy that loads, or a BE): nothing to follow.
    Direct { reply: Reply },
    /// The FE redirected to `advertised`, reached at `target` once `redirect_map` is applied.
    Redirect { advertised: String, target: Url },
    /// No answer without the body: the endpoint reads the whole body before answering.
    NoAnswer { waited: Duration },
}

impl Uploader {
    /// Whether `database` exists, asking the state of [`PROBE_LABEL`] in it. Needs the
    /// credentials, so an `Ok` also means they were accepted.
    ///
    /// # Errors
    ///
    /// `AuthRefused` when the credentials were refused, and the errors of `label_state`.
    pub async fn check_database(&self, database: &str) -> Result<DatabaseCheck, UploadError> {
        match self.label_state(database, PROBE_LABEL).await {
            Ok(_) => Ok(DatabaseCheck::Exists),
            Err(UploadError::LabelState { message, .. })
                if message.to_lowercase().contains("unknown database") =>
            {
                Ok(DatabaseCheck::Missing { message })
            }
            Err(err) => Err(err),
        }
    }

    /// Whether `database.table` exists, from the FE's table schema route.
    ///
    /// # Errors
    ///
    /// Transport errors only; every answer, a refusal included, is a `TableCheck`.
    pub async fn check_table(
        &self,
        database: &str,
        table: &str,
    ) -> Result<TableCheck, UploadError> {
        let url = self.api_url(&[database, table, "_schema"], None)?;
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
        let body = read_limited(response, exchange::MAX_REPLY_BYTES)
            .await
            .map_err(|e| request_error(&url, &e))?;
        Ok(table_check(status, &body))
    }

    /// Where a load into `database.table` would go: the head of a load under
    /// [`PROBE_LABEL`], whose body is never sent. Also shows whether the user may INSERT into
    /// the table, which the FE checks before it redirects.
    ///
    /// # Errors
    ///
    /// `AuthRefused` on 401/403 (wrong credentials, or no INSERT privilege on the table),
    /// `InsecureRedirect` when the redirect would go to plain http and that is not allowed,
    /// `BadRedirect`, and the connection errors.
    pub async fn check_redirect(
        &self,
        database: &str,
        table: &str,
    ) -> Result<RedirectCheck, UploadError> {
        let url = self.api_url(&[database, table, "_stream_load"], None)?;
        let addr = authority(&url);
        let stream = exchange::connect(&url, &addr, &self.inner.tls).await?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, NoBody>(TokioIo::new(stream))
            .await
            .map_err(|e| exchange_error(&addr, &e))?;
        let mut conn = pin!(conn);
        let mut conn_done = false;

        let request = self.probe_request(&url)?;
        let answer = exchange::drive(conn.as_mut(), &mut conn_done, sender.send_request(request));
        let response = match tokio::time::timeout(REDIRECT_WAIT, answer).await {
            Err(_) => {
                return Ok(RedirectCheck::NoAnswer {
                    waited: REDIRECT_WAIT,
                });
            }
            Ok(result) => result.map_err(|e| exchange_error(&addr, &e))?,
        };

        let status = response.status().as_u16();
        if is_redirect(status) {
            let advertised = response
                .headers()
                .get(header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .ok_or_else(|| UploadError::BadRedirect {
                    url: url.to_string(),
                    reason: format!("HTTP {status} without a Location"),
                })?;
            let target = self.follow(&url, &advertised)?;
            return Ok(RedirectCheck::Redirect { advertised, target });
        }
        // The answer of a proxy or BE is small, but the connection is dropped after it anyway:
        // read only what has already arrived.
        let body = match tokio::time::timeout(Duration::from_secs(2), read_body(response)).await {
            Ok(Ok(body)) => body,
            _ => String::new(),
        };
        let reply = Reply::parse(status, body);
        if status == 401 || status == 403 {
            return Err(UploadError::AuthRefused {
                url: url.to_string(),
                message: reply.message,
            });
        }
        Ok(RedirectCheck::Direct { reply })
    }

    fn probe_request(&self, url: &Url) -> Result<Request<NoBody>, UploadError> {
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let invalid = |name: &str| UploadError::InvalidHeader {
            name: name.to_owned(),
        };
        Request::builder()
            .method(Method::PUT)
            .uri(url.path())
            .version(Version::HTTP_11)
            .header(
                header::HOST,
                HeaderValue::from_str(&host).map_err(|_| invalid("host"))?,
            )
            .header("label", PROBE_LABEL)
            .header(header::AUTHORIZATION, self.inner.authorization.clone())
            .header(header::EXPECT, "100-continue")
            .header(header::CONTENT_LENGTH, 1)
            .body(NoBody)
            .map_err(|e| UploadError::InvalidUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })
    }
}

/// The verdict of a `_schema` answer: StarRocks answers 200 with `properties`, or the failure's
/// HTTP status with `{"status": <same>, "exception": <text>}`.
fn table_check(status: u16, body: &str) -> TableCheck {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let exception = json
        .as_ref()
        .and_then(|v| v.get("exception"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (status, exception) {
        (200, _) => match json.as_ref().and_then(|v| v.get("properties")) {
            Some(Value::Array(columns)) => TableCheck::Exists {
                columns: columns.len(),
            },
            _ => TableCheck::Unknown {
                reason: "HTTP 200 without a schema".to_owned(),
            },
        },
        (404, Some(message)) if message.to_lowercase().contains("does not exist") => {
            TableCheck::Missing { message }
        }
        (401 | 403, _) => TableCheck::Unknown {
            reason: "the user may not read the table's schema (no SELECT privilege; loads \
                     need only INSERT)"
                .to_owned(),
        },
        (status, Some(message)) => TableCheck::Unknown {
            reason: format!("HTTP {status}: {message}"),
        },
        (status, None) => TableCheck::Unknown {
            reason: format!("HTTP {status}: the endpoint does not offer the schema route"),
        },
    }
}

async fn read_body(
    response: http::Response<hyper::body::Incoming>,
) -> Result<String, hyper::Error> {
    use http_body_util::BodyExt;
    let mut body = response.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() >= exchange::MAX_REPLY_BYTES {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn exchange_error(addr: &str, err: &hyper::Error) -> UploadError {
    UploadError::Exchange {
        addr: addr.to_owned(),
        body_may_have_been_sent: false,
        cause: super::error_chain(err),
    }
}

/// A body of one byte that never comes: the head is sent, the body never is.
struct NoBody;

impl Body for NoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_label_breaks_the_cluster_label_rule() {
        assert!(!crate::label::is_valid_label(PROBE_LABEL));
    }

    #[test]
    fn reads_table_schema_answers() {
        let ok =
            r#"{"status":200,"properties":[{"type":"INT","name":"a"},{"type":"INT","name":"b"}]}"#;
        assert_eq!(table_check(200, ok), TableCheck::Exists { columns: 2 });
        let missing = r#"{"status":404,"exception":"Table [t] does not exists"}"#;
        assert_eq!(
            table_check(404, missing),
            TableCheck::Missing {
                message: "Table [t] does not exists".into()
            }
        );
        assert!(matches!(
            table_check(404, "Not Found"),
            TableCheck::Unknown { .. }
        ));
        assert!(matches!(table_check(401, "{}"), TableCheck::Unknown { .. }));
    }
}
