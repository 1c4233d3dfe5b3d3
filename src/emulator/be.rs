//! The BE's side of a load: the header phase (answered before any body byte is read), then
//! `100 Continue`, the streamed body, the decision, the faults, and the answer JSON.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;

use super::Fault;
use super::csv::{CsvOptions, CsvParser, parse_delimiter};
use super::http::{self, BodyError, Conn, Framing, Io, Request, Response};
use super::server::{After, Shared};
use super::state::{LabelInUse, State, Txn, generate_label};

/// Filtered rows listed per error log, like the real CSV scanner.
const ERROR_ROWS_PER_LOG: usize = 50;

/// Longest `column_separator` / `row_delimiter` in bytes.
const MAX_DELIMITER_BYTES: usize = 50;

/// Longest `timeout` the FE accepts (`max_stream_load_timeout_second`).
const MAX_TIMEOUT_SECS: u64 = 259_200;

const NO_DATA_MESSAGE: &str = "No partitions have data available for loading. If you are sure \
there may be no data to be loaded, you can use `ADMIN SET FRONTEND CONFIG \
('empty_load_as_error' = 'false')` to ensure such load jobs can succeed";

const MEM_LIMIT_MESSAGE: &str = "Memory of process exceed limit. Used: 68719476736, Limit: \
68719476736. Mem usage has exceed the limit of BE";

const TOO_MANY_VERSIONS_MESSAGE: &str = "Failed to load data into tablet 10086, because of too \
many versions, current/limit: 1001/1000. You can reduce the loading job concurrency, or increase \
loading data batch size.";

/// The load answer, keys in the BE's emission order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct LoadReply {
    txn_id: i64,
    label: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    existing_job_status: Option<&'static str>,
    message: String,
    number_total_rows: u64,
    number_loaded_rows: u64,
    number_filtered_rows: u64,
    number_unselected_rows: u64,
    load_bytes: u64,
    load_time_ms: u64,
    begin_txn_time_ms: u64,
    stream_load_plan_time_ms: u64,
    read_data_time_ms: u64,
    write_data_time_ms: u64,
    commit_and_publish_time_ms: u64,
    #[serde(rename = "ErrorURL", skip_serializing_if = "Option::is_none")]
    error_url: Option<String>,
}

impl LoadReply {
    fn fail(label: &str, txn_id: i64, message: impl Into<String>) -> LoadReply {
        LoadReply {
            txn_id,
            label: label.to_string(),
            status: "Fail",
            existing_job_status: None,
            message: message.into(),
            number_total_rows: 0,
            number_loaded_rows: 0,
            number_filtered_rows: 0,
            number_unselected_rows: 0,
            load_bytes: 0,
            load_time_ms: 0,
            begin_txn_time_ms: 0,
            stream_load_plan_time_ms: 0,
            read_data_time_ms: 0,
            write_data_time_ms: 0,
            commit_and_publish_time_ms: 0,
            error_url: None,
        }
    }

    /// Pretty-printed with four spaces, as rapidjson's writer does.
    fn to_response(&self) -> Response {
        let mut body = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut serializer = serde_json::Serializer::with_formatter(&mut body, formatter);
        // Serialising a struct of strings and numbers into a Vec cannot fail.
        let _ = self.serialize(&mut serializer);
        Response::json(200, body)
    }
}

/// What a load asked for, once its headers passed the checks.
struct LoadParams {
    csv: CsvOptions,
    max_filter_ratio: f64,
}

/// `PUT /api/{db}/{table}/_stream_load` on the BE (or the proxy, after the FE's checks).
pub(crate) async fn load<S: Io>(
    conn: &mut Conn<S>,
    req: &Request,
    peer: SocketAddr,
    shared: &Shared,
    database: &str,
    table: &str,
) -> io::Result<After> {
    let started = Instant::now();
    let state = &shared.state;
    let Ok(framing) = req.framing() else {
        http::write_response(conn, &Response::text(400, "Bad Request").closing()).await?;
        return Ok(After::Linger);
    };
    if state.take_http500() {
        tracing::debug!("fault: http 500");
        let answer = Response::text(500, "Internal Server Error").closing();
        http::write_response(conn, &answer).await?;
        return Ok(After::Linger);
    }
    let label = req
        .nonempty_header("label")
        .map_or_else(generate_label, str::to_string);
    let (txn, params) = match header_phase(req, peer, state, database, table, &label) {
        Ok(begun) => begun,
        Err(reply) => {
            tracing::debug!(%label, message = %reply.message, "be refuses load in header phase");
            http::write_response(conn, &reply.to_response().closing()).await?;
            return Ok(After::Linger);
        }
    };

    let _busy = state.enter_load();
    if req.expects_continue() && framing != Framing::Length(0) {
        http::write_continue(conn).await?;
    }
    if !state.load_delay.is_zero() {
        tokio::time::sleep(state.load_delay).await;
    }
    let read_started = Instant::now();
    let mut parser = CsvParser::new(
        params.csv,
        state.sample_room(database, table),
        ERROR_ROWS_PER_LOG,
    );
    let received = match http::read_body(conn, framing, |chunk| parser.feed(chunk)).await {
        Ok(received) => received,
        Err(err) => {
            state.abort(&txn);
            return answer_broken_body(conn, &txn, err).await;
        }
    };
    let read_ms = millis(read_started);

    let fault = txn.fault.clone();
    if fault == Some(Fault::CloseBeforeCommit) {
        tracing::debug!(label = %txn.label, "fault: close before commit");
        state.abort(&txn);
        return Ok(After::Close);
    }
    let fault_failure = match fault {
        Some(Fault::MemLimit) => Some(MEM_LIMIT_MESSAGE),
        Some(Fault::TooManyVersions) => Some(TOO_MANY_VERSIONS_MESSAGE),
        _ => None,
    };
    let mut reply = LoadReply::fail(&txn.label, txn.id, "");
    let outcome = parser.finish();
    reply.number_total_rows = outcome.total_rows;
    reply.number_loaded_rows = outcome.loaded_rows;
    reply.number_filtered_rows = outcome.filtered_rows;
    reply.load_bytes = received;
    reply.read_data_time_ms = read_ms;
    reply.write_data_time_ms = read_ms;
    if outcome.filtered_rows > 0 {
        let name = state.store_error_log(outcome.errors.join("\n") + "\n");
        reply.error_url = Some(format!(
            "{}/api/_load_error_log?file={name}",
            shared.be_base()
        ));
    }

    let ratio = outcome.filtered_rows as f64 / outcome.total_rows.max(1) as f64;
    if let Some(message) = fault_failure {
        reply.message = message.to_string();
        state.abort(&txn);
    } else if outcome.filtered_rows > 0 && ratio > params.max_filter_ratio {
        reply.message = "too many filtered rows".to_string();
        state.abort(&txn);
    } else if outcome.loaded_rows == 0 && state.empty_load_as_error {
        reply.message = NO_DATA_MESSAGE.to_string();
        state.abort(&txn);
    } else {
        if let Some(Fault::RunningFor(hold)) = fault {
            tracing::debug!(label = %txn.label, ?hold, "fault: transaction keeps running");
            tokio::time::sleep(hold).await;
        }
        let commit_started = Instant::now();
        let published = fault != Some(Fault::PublishTimeout);
        state.commit(&txn, outcome.loaded_rows, outcome.sample, published);
        reply.commit_and_publish_time_ms = millis(commit_started);
        if published {
            reply.status = "Success";
            reply.message = "OK".to_string();
        } else {
            reply.status = "Publish Timeout";
            reply.message = format!(
                "Publish timeout. The data will be visible after a while, txn_id: {}",
                txn.id
            );
        }
        match fault {
            Some(Fault::CommitThenClose) => {
                tracing::debug!(label = %txn.label, "fault: commit then close");
                return Ok(After::Close);
            }
            Some(Fault::SlowAnswer(delay)) => tokio::time::sleep(delay).await,
            _ => {}
        }
    }
    reply.load_time_ms = millis(started);
    tracing::debug!(label = %txn.label, status = reply.status, rows = reply.number_loaded_rows,
        "be answers load");
    let answer = reply.to_response();
    if req.wants_close() {
        http::write_response(conn, &answer.closing()).await?;
        return Ok(After::Close);
    }
    http::write_response(conn, &answer).await?;
    Ok(After::KeepAlive)
}

/// The answer when the body did not arrive whole; the peer is probably gone already.
async fn answer_broken_body<S: Io>(
    conn: &mut Conn<S>,
    txn: &Txn,
    err: BodyError,
) -> io::Result<After> {
    let (message, received) = match err {
        BodyError::Truncated(received) => ("receive body don't equal with body bytes", received),
        BodyError::Malformed => ("receive body don't equal with body bytes", 0),
        BodyError::Io(err) => return Err(err),
    };
    let mut reply = LoadReply::fail(&txn.label, txn.id, message);
    reply.load_bytes = received;
    let _ = http::write_response(conn, &reply.to_response().closing()).await;
    Ok(After::Close)
}

/// Everything decided before the body: the BE's own header checks, then the FE's checks as it
/// begins the transaction, then the plan checks (which abort the transaction they follow).
fn header_phase(
    req: &Request,
    peer: SocketAddr,
    state: &State,
    database: &str,
    table: &str,
    label: &str,
) -> Result<(Txn, LoadParams), Box<LoadReply>> {
    let fail = |message: String| Box::new(LoadReply::fail(label, -1, message));
    let Some((user, password)) = http::basic_auth(req) else {
        return Err(fail("no valid Basic authorization".to_string()));
    };
    if let Some(format) = req.nonempty_header("format")
        && !format.eq_ignore_ascii_case("csv")
    {
        return Err(fail(format!("unknown data format, format={format}")));
    }
    let timeout = match req.nonempty_header("timeout") {
        None => None,
        Some(value) => match parse_unsigned(value) {
            Some(secs) => Some(secs),
            None => return Err(fail("Invalid timeout format".to_string())),
        },
    };

    if !state.is_valid_login(&user, &password) {
        return Err(fail(format!("Access denied for {user}@{}", peer.ip())));
    }
    if !state.has_database(database) {
        return Err(fail(format!("unknown database, database={database}")));
    }
    let Some(columns) = state.columns(database, table) else {
        return Err(fail(format!("Unknown table '{table}'")));
    };
    if !is_valid_label(label) {
        return Err(fail(format!(
            "Label format error. regex: ^[-\\w]{{1,128}}$, label: {label}"
        )));
    }
    if timeout.is_some_and(|secs| secs == 0 || secs > MAX_TIMEOUT_SECS) {
        return Err(fail(format!(
            "Invalid timeout. Timeout should between 1 and {MAX_TIMEOUT_SECS} seconds"
        )));
    }
    let txn = state.begin(database, table, label).map_err(|in_use| {
        let mut reply = fail(format!("Label [{label}] has already been used."));
        reply.status = "Label Already Exists";
        reply.existing_job_status = Some(match in_use {
            LabelInUse::Running => "RUNNING",
            LabelInUse::Finished => "FINISHED",
        });
        reply
    })?;

    match load_params(req, columns) {
        Ok(params) => Ok((txn, params)),
        Err(message) => {
            state.abort(&txn);
            Err(Box::new(LoadReply::fail(label, txn.id, message)))
        }
    }
}

/// The plan checks of the BE and the FE, in their order.
fn load_params(req: &Request, table_columns: usize) -> Result<LoadParams, String> {
    let mut csv = CsvOptions {
        columns: table_columns,
        ..CsvOptions::default()
    };
    if let Some(value) = req.nonempty_header("skip_header") {
        match parse_leading_integer(value) {
            None => return Err("Invalid csv load skip_header format".to_string()),
            Some(n) if n < 0 => {
                return Err("skip_header must be equal or greater than 0".to_string());
            }
            Some(n) => csv.skip_header = n.unsigned_abs(),
        }
    }
    if let Some(value) = req.nonempty_header("trim_space") {
        csv.trim_space = parse_bool(value)
            .ok_or_else(|| "Invalid trim space format. Must be bool type".to_string())?;
    }
    // `nonempty_header` guarantees a first byte, and the BE only uses that byte.
    csv.enclose = req.nonempty_header("enclose").map(|v| v.as_bytes()[0]);
    csv.escape = req.nonempty_header("escape").map(|v| v.as_bytes()[0]);
    if req.nonempty_header("partitions").is_some()
        && req.nonempty_header("temporary_partitions").is_some()
    {
        return Err("Can not specify both partitions and temporary partitions".to_string());
    }
    if let Some(value) = req.nonempty_header("strict_mode")
        && parse_bool(value).is_none()
    {
        return Err("Invalid strict mode format. Must be bool type".to_string());
    }
    let max_filter_ratio = match req.nonempty_header("max_filter_ratio") {
        None => 0.0,
        Some(value) => match value.trim().parse::<f64>() {
            Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
            _ => {
                return Err(format!(
                    "Invalid max_filter_ratio: {value}. It must be a number between 0 and 1"
                ));
            }
        },
    };
    if let Some(value) = req.nonempty_header("column_separator") {
        csv.column_separator = delimiter("column_separator", value)?;
    }
    if let Some(value) = req.nonempty_header("row_delimiter") {
        csv.row_delimiter = delimiter("row_delimiter", value)?;
    }
    if let Some(columns) = req.nonempty_header("columns") {
        // Entries with `=` are computed; the others take the file's fields in order.
        csv.columns = columns.split(',').filter(|c| !c.contains('=')).count();
    }
    Ok(LoadParams {
        csv,
        max_filter_ratio,
    })
}

fn delimiter(name: &str, value: &str) -> Result<Vec<u8>, String> {
    let bytes = parse_delimiter(value)?;
    if bytes.len() > MAX_DELIMITER_BYTES {
        return Err(format!(
            "The valid bytes length for '{name}' is [1, {MAX_DELIMITER_BYTES}], but got {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// `GET /api/_load_error_log?file=NAME`: the filtered rows of one load, with reasons.
pub(crate) fn error_log(req: &Request, state: &State) -> Response {
    match req
        .query_param("file")
        .and_then(|name| state.error_log(&name))
    {
        Some(text) => Response::text(200, text),
        None => Response::text(404, "Not Found"),
    }
}

/// The FE's label rule: 1 to 128 of ASCII letters, digits, `_` and `-`.
fn is_valid_label(label: &str) -> bool {
    (1..=128).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_unsigned(value: &str) -> Option<u64> {
    let value = value.trim();
    (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit())).then(|| value.parse().ok())?
}

/// Like C's `stoll`: leading spaces, a sign, digits; what follows the digits is ignored.
fn parse_leading_integer(value: &str) -> Option<i64> {
    let value = value.trim_start();
    let (sign, digits) = match value.as_bytes().first() {
        Some(b'-') => (-1, &value[1..]),
        Some(b'+') => (1, &value[1..]),
        _ => (1, value),
    };
    let end = digits
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse::<i64>().ok().map(|n| sign * n)
}

fn parse_bool(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_keep_the_real_key_order() {
        let mut reply = LoadReply::fail("l", 7, "OK");
        reply.status = "Success";
        reply.error_url = Some("http://x".into());
        let body = String::from_utf8(reply.to_response().body).unwrap();
        let keys: Vec<&str> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix('"').and_then(|l| l.split('"').next()))
            .collect();
        assert_eq!(
            keys,
            [
                "TxnId",
                "Label",
                "Status",
                "Message",
                "NumberTotalRows",
                "NumberLoadedRows",
                "NumberFilteredRows",
                "NumberUnselectedRows",
                "LoadBytes",
                "LoadTimeMs",
                "BeginTxnTimeMs",
                "StreamLoadPlanTimeMs",
                "ReadDataTimeMs",
                "WriteDataTimeMs",
                "CommitAndPublishTimeMs",
                "ErrorURL"
            ]
        );
        assert!(body.contains("\n    \"TxnId\": 7,"), "{body}");
    }

    #[test]
    fn parses_numbers_like_the_be() {
        assert_eq!(parse_leading_integer(" 12abc"), Some(12));
        assert_eq!(parse_leading_integer("-1"), Some(-1));
        assert_eq!(parse_leading_integer("abc"), None);
        assert_eq!(parse_unsigned("600"), Some(600));
        assert_eq!(parse_unsigned("6s"), None);
        assert!(is_valid_label("a-b_C9"));
        assert!(!is_valid_label("a.b"));
        assert!(!is_valid_label(&"x".repeat(129)));
    }
}
