//! What the cluster answered to a load, and what that answer means for the file.
//!
//! Three reply dialects reach a Stream Load client (STREAMLOAD.md §3, §5): the BE's load JSON
//! (capitalised keys, `Status` of `Success`, `Publish Timeout`, `Label Already Exists`, `Fail`),
//! the FE's `{"Status":"FAILED","Message":...}`, and the lower-case RestBaseResult of a 401 or
//! 500. HTTP 200 never means success by itself: the verdict comes from the whole reply.

use serde_json::{Map, Value};

/// The cluster's answer to one load, parsed as far as its dialect allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub http_status: u16,
    pub dialect: Dialect,
    /// `Status` (or `status`) as sent; empty when the reply was not understood.
    pub status: String,
    /// `Message` (or `message`/`msg`); for an unparsed reply, the start of its body.
    pub message: String,
    pub label: Option<String>,
    /// `TxnId`; `-1` (no transaction) is kept as sent.
    pub txn_id: Option<i64>,
    /// `ExistingJobStatus` of a `Label Already Exists` reply: `FINISHED` or `RUNNING`.
    pub existing_job_status: Option<String>,
    pub rows_total: u64,
    pub rows_loaded: u64,
    pub rows_filtered: u64,
    pub rows_unselected: u64,
    pub load_bytes: u64,
    pub load_time_ms: u64,
    /// Where the BE keeps the rejected rows (`ErrorURL`), as advertised by the cluster.
    pub error_url: Option<String>,
    /// The raw body text, as far as it was read (bounded by the exchange).
    pub body: String,
}

/// Which of the reply shapes the body had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// The BE's load result (`TxnId`, `Label`, `Status`, `Message`, row counts, ...).
    BeLoad,
    /// The FE's `TransactionResult`: `Status` `FAILED` and a `Message`.
    FeFailed,
    /// The lower-case RestBaseResult (`status`, `msg`, `code`, `message`) of a 401 or 500.
    RestResult,
    /// Not JSON, or JSON of no known shape (a proxy's error page, an empty body).
    Unparsed,
}

/// What the reply means for the file: the decision the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Committed: `Success`, or `Publish Timeout` (visible later, no retry needed).
    Loaded { publish_pending: bool },
    /// The label belongs to a finished load: the rows are already in.
    LabelFinished,
    /// The label belongs to a load still in flight (or of unknown state): ask the label state.
    LabelRunning,
    /// The cluster refused the file for a reason a retry cannot fix.
    Rejected { reason: String },
    /// The cluster could not take the load now; the transaction was rolled back, retry later.
    Transient { reason: String },
    /// The outcome is not known (5xx, `Transaction status unknown`, an unreadable answer):
    /// resolve it by label.
    Unknown { reason: String },
    /// The credentials were refused: pause loads, lose nothing.
    AuthRefused { message: String },
}

/// The state of the latest transaction under a label (`get_load_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelState {
    /// No such label: never used, expired from the label window, or the leader is not ready.
    Unknown,
    /// Running.
    Prepare,
    /// Pre-committed (two-phase); will become visible.
    Prepared,
    /// Committed, publish pending; will become visible.
    Committed,
    Visible,
    /// Rolled back; the label may be used again.
    Aborted,
    /// A state this version does not know, as sent.
    Other(String),
}

/// Message fragments (lower case) of failures that retrying cannot fix: data quality, metadata,
/// label format, empty loads, bad parameters, limits of the table or the request.
const REJECTED: &[&str] = &[
    "too many filtered rows",
    "label format error",
    "no partitions have data",
    "all partitions have no load data",
    "unknown database",
    "unknown table",
    "no database selected",
    "no table selected",
    "there is no 100-continue header",
    "primary key size exceed",
    "only primary key table support partial update",
    "only olap/lake table support",
    "only olap table support",
    "unknown data format",
    "must be bool",
    "can not specify both",
    "only one of http header",
    "invalid ",
    "body size",
    "body exceed max size",
    "exceed the max size",
];

/// Message fragments (lower case) of failures that pass: load on the cluster, compaction lag,
/// nodes restarting. The official SDK counts the running-txn limit as final; for a service that
/// waits and retries with backoff it is exactly the kind of congestion that passes.
const TRANSIENT: &[&str] = &[
    "too many versions",
    "too many tablet versions",
    "current running txns on db",
    "service is shutting down",
    "no backend alive",
    "no backend or compute node alive",
    "cuncurrent limit",
    "concurrent limit",
    "please retry later",
    "try again later",
];

impl Reply {
    /// Parse the answer to a load: `http_status` and the (bounded) body text.
    pub fn parse(http_status: u16, body: String) -> Reply {
        let mut reply = Reply {
            http_status,
            dialect: Dialect::Unparsed,
            status: String::new(),
            message: String::new(),
            label: None,
            txn_id: None,
            existing_job_status: None,
            rows_total: 0,
            rows_loaded: 0,
            rows_filtered: 0,
            rows_unselected: 0,
            load_bytes: 0,
            load_time_ms: 0,
            error_url: None,
            body: String::new(),
        };

        match serde_json::from_str::<Value>(&body) {
            Ok(Value::Object(obj)) if obj.contains_key("Status") => reply.fill_capitalised(&obj),
            Ok(Value::Object(obj)) if obj.contains_key("status") => {
                reply.dialect = Dialect::RestResult;
                reply.status = text(&obj, "status").unwrap_or_default();
                reply.message = text(&obj, "message")
                    .filter(|m| !m.is_empty())
                    .or_else(|| text(&obj, "msg"))
                    .unwrap_or_default();
            }
            _ => reply.message = excerpt(&body),
        }
        reply.body = body;
        reply
    }

    fn fill_capitalised(&mut self, obj: &Map<String, Value>) {
        self.status = text(obj, "Status").unwrap_or_default();
        self.message = text(obj, "Message").unwrap_or_default();
        self.dialect = if self.status == "FAILED" {
            Dialect::FeFailed
        } else {
            Dialect::BeLoad
        };
        self.label = text(obj, "Label");
        self.txn_id = obj.get("TxnId").and_then(Value::as_i64);
        self.existing_job_status = text(obj, "ExistingJobStatus");
        self.rows_total = count(obj, "NumberTotalRows");
        self.rows_loaded = count(obj, "NumberLoadedRows");
        self.rows_filtered = count(obj, "NumberFilteredRows");
        self.rows_unselected = count(obj, "NumberUnselectedRows");
        self.load_bytes = count(obj, "LoadBytes");
        self.load_time_ms = count(obj, "LoadTimeMs");
        self.error_url = text(obj, "ErrorURL").filter(|u| !u.is_empty());
    }

    /// What this reply means for the file (DESIGN.md "Outcomes", STREAMLOAD.md §8).
    pub fn verdict(&self) -> Verdict {
        match self.http_status {
            401 | 403 => {
                return Verdict::AuthRefused {
                    message: self.reason(),
                };
            }
            500..=599 => {
                return Verdict::Unknown {
                    reason: self.reason(),
                };
            }
            408 | 429 => {
                return Verdict::Transient {
                    reason: self.reason(),
                };
            }
            200..=299 => {}
            300..=399 => {
                return Verdict::Unknown {
                    reason: format!("unfollowed redirect: {}", self.reason()),
                };
            }
            _ => {
                return Verdict::Rejected {
                    reason: self.reason(),
                };
            }
        }

        match self.dialect {
            Dialect::BeLoad => self.load_verdict(),
            Dialect::FeFailed | Dialect::RestResult if self.status.eq_ignore_ascii_case("ok") => {
                Verdict::Unknown {
                    reason: format!("unexpected reply to a load: {}", self.reason()),
                }
            }
            Dialect::FeFailed | Dialect::RestResult => self.failure_verdict(),
            Dialect::Unparsed => Verdict::Unknown {
                reason: format!("unreadable reply: {}", self.reason()),
            },
        }
    }

    fn load_verdict(&self) -> Verdict {
        match self.status.as_str() {
            "Success" => Verdict::Loaded {
                publish_pending: false,
            },
            "Publish Timeout" => Verdict::Loaded {
                publish_pending: true,
            },
            "Label Already Exists" => self.label_used_verdict(),
            "Fail" => self.failure_verdict(),
            _ => Verdict::Unknown {
                reason: format!("unknown load status: {}", self.reason()),
            },
        }
    }

    fn label_used_verdict(&self) -> Verdict {
        match self.existing_job_status.as_deref() {
            Some("FINISHED") => Verdict::LabelFinished,
            _ => Verdict::LabelRunning,
        }
    }

    /// A `Fail` (or an FE `FAILED`): the transaction did not commit, the message says why.
    /// Failures no rule names are taken as transient, as the official SDK does: a `Fail` is a
    /// rolled-back load, so trying again under the same label is always safe.
    fn failure_verdict(&self) -> Verdict {
        let lower = self.message.to_lowercase();
        let reason = self.reason();

        if lower.contains("label") && lower.contains("has already been used") {
            return self.label_used_verdict();
        }
        if lower.contains("access denied") || lower.contains("no valid basic authorization") {
            return Verdict::AuthRefused { message: reason };
        }
        if lower.contains("need auth information") {
            return Verdict::AuthRefused { message: reason };
        }
        if lower.contains("transaction status unknown") {
            return Verdict::Unknown { reason };
        }
        // Congestion first: its messages advise on batch sizes and limits and must not be
        // mistaken for a refusal of the file.
        if is_memory_limit(&lower) || TRANSIENT.iter().any(|m| lower.contains(m)) {
            return Verdict::Transient { reason };
        }
        if REJECTED.iter().any(|m| lower.contains(m)) {
            return Verdict::Rejected { reason };
        }
        Verdict::Transient { reason }
    }

    /// A one-line account of the reply for verdicts and logs.
    fn reason(&self) -> String {
        let message = if self.message.is_empty() {
            "(no message)"
        } else {
            self.message.as_str()
        };
        if self.status.is_empty() {
            format!("HTTP {}: {message}", self.http_status)
        } else {
            format!("HTTP {} {}: {message}", self.http_status, self.status)
        }
    }
}

impl LabelState {
    /// The state named by `get_load_state`'s `state` key.
    pub fn from_name(name: &str) -> LabelState {
        match name {
            "UNKNOWN" => LabelState::Unknown,
            "PREPARE" => LabelState::Prepare,
            "PREPARED" => LabelState::Prepared,
            "COMMITTED" => LabelState::Committed,
            "VISIBLE" => LabelState::Visible,
            "ABORTED" => LabelState::Aborted,
            other => LabelState::Other(other.to_owned()),
        }
    }
}

/// Parse a `get_load_state` body: `Ok(state)`, or `Err(the cluster's message)` when it did not
/// answer with a state.
pub(crate) fn parse_label_state(body: &str) -> Result<LabelState, String> {
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(body) else {
        return Err(format!("unreadable label state reply: {}", excerpt(body)));
    };
    let status = text(&obj, "status").unwrap_or_default();
    match text(&obj, "state") {
        Some(state) if !status.eq_ignore_ascii_case("failed") => Ok(LabelState::from_name(&state)),
        _ => {
            let message = text(&obj, "message")
                .filter(|m| !m.is_empty() && m != "OK")
                .or_else(|| text(&obj, "msg"))
                .unwrap_or_else(|| excerpt(body));
            Err(message)
        }
    }
}

/// Memory limit failures come in several wordings (`Memory of process exceed limit`,
/// `load memory limit exceeded`, `Mem usage has exceed the limit of BE`).
fn is_memory_limit(lower: &str) -> bool {
    (lower.contains("memory") || lower.contains("mem usage") || lower.contains("mem limit"))
        && (lower.contains("exceed") || lower.contains("limit"))
}

fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn count(obj: &Map<String, Value>, key: &str) -> u64 {
    obj.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The first line of a body, at most 200 characters, for messages about replies not understood.
fn excerpt(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or("");
    let mut out: String = line.chars().take(200).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("(empty body)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(status: &str, message: &str) -> Reply {
        let body = serde_json::json!({
            "TxnId": 1001,
            "Label": "sluice_abc",
            "Status": status,
            "Message": message,
            "NumberTotalRows": 10,
            "NumberLoadedRows": 8,
            "NumberFilteredRows": 2,
            "NumberUnselectedRows": 0,
            "LoadBytes": 420,
            "LoadTimeMs": 35,
            "BeginTxnTimeMs": 1,
            "StreamLoadPlanTimeMs": 2,
            "ReadDataTimeMs": 3,
            "WriteDataTimeMs": 4,
            "CommitAndPublishTimeMs": 5,
        });
        Reply::parse(200, serde_json::to_string_pretty(&body).unwrap())
    }

    fn fail(message: &str) -> Verdict {
        be("Fail", message).verdict()
    }

    fn is_rejected(v: &Verdict) -> bool {
        matches!(v, Verdict::Rejected { .. })
    }

    fn is_transient(v: &Verdict) -> bool {
        matches!(v, Verdict::Transient { .. })
    }

    #[test]
    fn parses_a_be_success_reply() {
        let r = be("Success", "OK");
        assert_eq!(r.dialect, Dialect::BeLoad);
        assert_eq!(r.txn_id, Some(1001));
        assert_eq!(r.label.as_deref(), Some("sluice_abc"));
        assert_eq!((r.rows_total, r.rows_loaded, r.rows_filtered), (10, 8, 2));
        assert_eq!((r.load_bytes, r.load_time_ms), (420, 35));
        assert_eq!(
            r.verdict(),
            Verdict::Loaded {
                publish_pending: false
            }
        );
    }

    #[test]
    fn parses_an_old_reply_with_put_time_and_no_timings() {
        let body = r#"{"TxnId": 7, "Label": "l", "Status": "Success", "Message": "OK",
            "NumberTotalRows": 3, "NumberLoadedRows": 3, "NumberFilteredRows": 0,
            "NumberUnselectedRows": 0, "LoadBytes": 30, "LoadTimeMs": 12,
            "StreamLoadPutTimeMs": 2}"#;
        let r = Reply::parse(200, body.into());
        assert_eq!(r.rows_loaded, 3);
        assert_eq!(
            r.verdict(),
            Verdict::Loaded {
                publish_pending: false
            }
        );

        let minimal = Reply::parse(200, r#"{"Status":"Success","Message":"OK"}"#.into());
        assert_eq!(minimal.dialect, Dialect::BeLoad);
        assert_eq!(minimal.load_time_ms, 0);
    }

    #[test]
    fn publish_timeout_is_loaded_with_publish_pending() {
        let r = be(
            "Publish Timeout",
            "Publish timeout. The data will be visible after a while, txn_id: 1001",
        );
        assert_eq!(
            r.verdict(),
            Verdict::Loaded {
                publish_pending: true
            }
        );
    }

    #[test]
    fn label_already_exists_follows_the_existing_job() {
        let body = |job: &str| {
            format!(
                r#"{{"TxnId": -1, "Label": "sluice_abc", "Status": "Label Already Exists",
                "ExistingJobStatus": "{job}",
                "Message": "Label [sluice_abc] has already been used.",
                "NumberTotalRows": 0, "NumberLoadedRows": 0}}"#
            )
        };
        let finished = Reply::parse(200, body("FINISHED"));
        assert_eq!(finished.existing_job_status.as_deref(), Some("FINISHED"));
        assert_eq!(finished.txn_id, Some(-1));
        assert_eq!(finished.verdict(), Verdict::LabelFinished);
        assert_eq!(
            Reply::parse(200, body("RUNNING")).verdict(),
            Verdict::LabelRunning
        );
    }

    #[test]
    fn a_fail_saying_the_label_is_used_is_a_label_verdict() {
        assert_eq!(
            fail("Label [sluice_abc] has already been used."),
            Verdict::LabelRunning
        );
        let mut r = be("Fail", "Label [sluice_abc] has already been used.");
        r.existing_job_status = Some("FINISHED".into());
        assert_eq!(r.verdict(), Verdict::LabelFinished);
    }

    #[test]
    fn data_quality_and_metadata_failures_are_rejected() {
        for message in [
            "too many filtered rows",
            "unknown database, database=sales",
            r#"unknown table "sales.orders""#,
            "Unknown table 'orders'",
            "Label format error. regex: ^[-\\w]{1,128}$, label: a.b",
            "all partitions have no load data",
            "No partitions have data available for loading. If you are sure there may be no data \
             to be loaded, you can use `ADMIN SET FRONTEND CONFIG ('empty_load_as_error' = \
             'false')` to ensure such load jobs can succeed",
            "Invalid timeout format",
            "Invalid timeout. Timeout should between 1 and 259200 seconds",
            "strict_mode must be bool type",
            "unknown data format, format=xml",
            "Only olap/lake table support stream load",
            "body size 20000000000 exceed limit: 10737418240, ... You can increase the limit by \
             setting streaming_load_max_mb in be.conf.",
        ] {
            assert!(is_rejected(&fail(message)), "{message}");
        }
    }

    #[test]
    fn congestion_failures_are_transient() {
        for message in [
            "Memory of process exceed limit. QUERY Backend: 10.0.0.1, used: 10G, limit: 8G",
            "Too many versions. tablet_id: 10021, version_count: 1001, limit: 1000",
            "Failed to load data into tablet 10021, because of too many versions, current/limit: \
             1001/1000. You can reduce the loading job concurrency, or increase loading data \
             batch size. If you are loading data with Routine Load, you can increase \
             FE configs routine_load_task_consume_second and max_routine_load_batch_size,",
            "current running txns on db 10002 is 1000, larger than limit 1000",
            "Service is shutting down, please retry later!",
            "Stream Load exceed http cuncurrent limit 64, please try again later",
            "close index channel failed",
        ] {
            assert!(is_transient(&fail(message)), "{message}");
        }
    }

    #[test]
    fn transaction_status_unknown_is_unknown() {
        let v = fail(
            "Commit transaction fail cause TIMEOUT, Transaction status unknown, you can retry \
             with same label.",
        );
        assert!(matches!(v, Verdict::Unknown { .. }), "{v:?}");
    }

    #[test]
    fn be_auth_failures_are_auth_refused() {
        for message in [
            "no valid Basic authorization",
            "Access denied for loader@10.0.0.7",
            "Access denied; you need (at least one of) the INSERT privilege(s) for this operation",
        ] {
            assert!(
                matches!(fail(message), Verdict::AuthRefused { .. }),
                "{message}"
            );
        }
    }

    #[test]
    fn parses_the_fe_failed_dialect() {
        let r = Reply::parse(
            200,
            r#"{"Status": "FAILED", "Message": "class com.starrocks.common.DdlException: There is no 100-continue header"}"#
                .into(),
        );
        assert_eq!(r.dialect, Dialect::FeFailed);
        assert!(r.message.ends_with("There is no 100-continue header"));
        assert!(is_rejected(&r.verdict()));

        let no_be = Reply::parse(
            200,
            r#"{"Status":"FAILED","Message":"No backend alive."}"#.into(),
        );
        assert!(is_transient(&no_be.verdict()));
    }

    #[test]
    fn parses_the_401_rest_result_old_and_new() {
        let new = Reply::parse(
            401,
            r#"{"status":"FAILED","code":"1","msg":"Access denied for root@1.2.3.4","message":"Access denied for root@1.2.3.4"}"#
                .into(),
        );
        assert_eq!(new.dialect, Dialect::RestResult);
        assert_eq!(new.message, "Access denied for root@1.2.3.4");
        assert!(matches!(new.verdict(), Verdict::AuthRefused { .. }));

        let old = Reply::parse(
            401,
            r#"{"status":"FAILED","msg":"Need auth information."}"#.into(),
        );
        assert_eq!(old.message, "Need auth information.");
        assert!(matches!(old.verdict(), Verdict::AuthRefused { .. }));
    }

    #[test]
    fn http_200_alone_is_not_success() {
        for body in ["", "OK", "<html>ok</html>", "[]", r#"{"result":"ok"}"#] {
            let r = Reply::parse(200, body.into());
            assert_eq!(r.dialect, Dialect::Unparsed, "{body}");
            assert!(matches!(r.verdict(), Verdict::Unknown { .. }), "{body}");
        }
    }

    #[test]
    fn server_errors_are_unknown_and_client_errors_rejected() {
        let r = Reply::parse(502, "<html>Bad Gateway</html>".into());
        assert!(matches!(r.verdict(), Verdict::Unknown { .. }));
        let r = Reply::parse(
            500,
            r#"{"status":"FAILED","msg":"NullPointerException"}"#.into(),
        );
        assert!(matches!(r.verdict(), Verdict::Unknown { .. }));
        let r = Reply::parse(404, "Not Found".into());
        assert!(is_rejected(&r.verdict()));
        let r = Reply::parse(403, "Forbidden".into());
        assert!(matches!(r.verdict(), Verdict::AuthRefused { .. }));
        let r = Reply::parse(429, "slow down".into());
        assert!(is_transient(&r.verdict()));
    }

    #[test]
    fn keeps_the_error_url() {
        let body = r#"{"Status":"Fail","Message":"too many filtered rows","NumberTotalRows":5,
            "NumberFilteredRows":5,
            "ErrorURL":"http://10.0.0.12:8040/api/_load_error_log?file=error_log_x"}"#;
        let r = Reply::parse(200, body.into());
        assert_eq!(
            r.error_url.as_deref(),
            Some("http://10.0.0.12:8040/api/_load_error_log?file=error_log_x")
        );
        assert_eq!(r.body, body);
    }

    #[test]
    fn parses_label_states() {
        let new = r#"{"state":"VISIBLE","status":"OK","code":"0","msg":"Success","message":"OK"}"#;
        assert_eq!(parse_label_state(new), Ok(LabelState::Visible));
        let old = r#"{"state":"PREPARE","status":"OK","msg":"Success"}"#;
        assert_eq!(parse_label_state(old), Ok(LabelState::Prepare));
        for (name, state) in [
            ("UNKNOWN", LabelState::Unknown),
            ("PREPARED", LabelState::Prepared),
            ("COMMITTED", LabelState::Committed),
            ("ABORTED", LabelState::Aborted),
            ("FANCY", LabelState::Other("FANCY".into())),
        ] {
            let body = format!(r#"{{"state":"{name}","status":"OK"}}"#);
            assert_eq!(parse_label_state(&body), Ok(state));
        }
        let failed = r#"{"status":"FAILED","msg":"unknown database, database=nope"}"#;
        assert_eq!(
            parse_label_state(failed),
            Err("unknown database, database=nope".into())
        );
        assert!(parse_label_state("<html>").is_err());
    }
}
