//! The FE: checks a load in the real order and redirects it to the BE without reading its
//! body; answers label-state queries and the emulator's test endpoints.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use super::Fault;
use super::http::{self, Conn, Io, Request, Response};
use super::server::{After, Route, Shared};
use super::state::State;

/// The FE's error JSON for loads (`TransactionResult`), capitalised keys.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TransactionResult<'a> {
    status: &'a str,
    message: String,
}

/// The FE's REST result (`RestBaseResult`), lower-case keys; `state` only for label queries.
#[derive(Serialize)]
struct RestResult<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    status: &'a str,
    code: &'a str,
    msg: &'a str,
    message: &'a str,
}

impl RestResult<'_> {
    fn ok(state: Option<&str>) -> Vec<u8> {
        to_json(&RestResult {
            state,
            status: "OK",
            code: "0",
            msg: "Success",
            message: "OK",
        })
    }

    fn failed(text: &str) -> Vec<u8> {
        to_json(&RestResult {
            state: None,
            status: "FAILED",
            code: "1",
            msg: text,
            message: text,
        })
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Serialising plain structs of strings cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `PUT /api/{db}/{table}/_stream_load` on the FE: the checks, then a 307 to the BE with
/// `Connection: close`. Never reads the body and never sends `100 Continue`.
pub(crate) async fn stream_load<S: Io>(
    conn: &mut Conn<S>,
    req: &Request,
    peer: SocketAddr,
    shared: &Shared,
    database: &str,
    table: &str,
) -> io::Result<After> {
    let answer = match check_stream_load(req, peer, &shared.state, database, table) {
        Err(answer) => answer,
        Ok(()) => {
            let location = format!("{}{}", shared.be_base(), req.target);
            tracing::debug!(%location, "fe redirects load");
            Response {
                body: Vec::new(),
                close: true,
                headers: Vec::new(),
                status: 307,
            }
            .with_header("Location", location)
        }
    };
    http::write_response(conn, &answer).await?;
    Ok(After::Linger)
}

/// The FE's checks of a load, in its order: basic auth, `Expect`, database and table names.
/// The refusal closes the connection.
pub(crate) fn check_stream_load(
    req: &Request,
    peer: SocketAddr,
    state: &State,
    database: &str,
    table: &str,
) -> Result<(), Response> {
    check_auth(req, peer, state).map_err(Response::closing)?;
    let failed = |text: &str| {
        let message = format!("class com.starrocks.common.DdlException: {text}");
        Response::json(
            200,
            to_json(&TransactionResult {
                status: "FAILED",
                message,
            }),
        )
        .closing()
    };
    // HTTP/1.0 has no 100 Continue, so the FE only asks HTTP/1.1 clients for it.
    if req.minor >= 1 && !req.expects_continue() {
        return Err(failed("There is no 100-continue header"));
    }
    if database.is_empty() {
        return Err(failed("No database selected."));
    }
    if table.is_empty() {
        return Err(failed("No table selected."));
    }
    Ok(())
}

/// Basic auth as the FE checks it: 401 with `WWW-Authenticate` and a `RestBaseResult`.
fn check_auth(req: &Request, peer: SocketAddr, state: &State) -> Result<(), Response> {
    let text = match http::basic_auth(req) {
        None => "Need auth information.".to_string(),
        Some((user, password)) if !state.is_valid_login(&user, &password) => {
            format!("Access denied for {user}@{}", peer.ip())
        }
        Some(_) => return Ok(()),
    };
    Err(Response::json(401, RestResult::failed(&text))
        .with_header("WWW-Authenticate", "Basic realm=\"\""))
}

/// The FE's other routes: label state and the test endpoints. All need basic auth.
pub(crate) fn query(req: &Request, peer: SocketAddr, state: &State, route: Route) -> Response {
    if let Err(answer) = check_auth(req, peer, state) {
        return answer;
    }
    match route {
        Route::LoadState { database } => load_state(req, state, &database),
        Route::TableSchema { database, table } => table_schema(state, &database, &table),
        Route::EmulatorStats => Response::json(
            200,
            serde_json::to_vec_pretty(&state.stats()).unwrap_or_default(),
        ),
        Route::EmulatorClock => {
            let advance = req
                .query_param("advance")
                .and_then(|s| s.parse::<f64>().ok());
            match advance.and_then(|secs| Duration::try_from_secs_f64(secs).ok()) {
                Some(by) => {
                    state.advance_clock(by);
                    Response::json(200, RestResult::ok(None))
                }
                None => Response::json(400, RestResult::failed("advance=SECONDS is required")),
            }
        }
        Route::EmulatorFault => {
            let kind = req.query_param("kind").unwrap_or_default();
            let duration = req.query_param("for");
            match Fault::parse(&kind, duration.as_deref()) {
                Ok(fault) => {
                    tracing::debug!(?fault, "fault queued");
                    state.inject(fault);
                    Response::json(200, RestResult::ok(None))
                }
                Err(err) => Response::json(400, RestResult::failed(&err.to_string())),
            }
        }
        _ => Response::text(404, "Not Found"),
    }
}

/// `GET /api/{db}/get_load_state?label=L`.
fn load_state(req: &Request, state: &State, database: &str) -> Response {
    let label = req.query_param("label").unwrap_or_default();
    let body = if database.is_empty() {
        RestResult::failed("No database selected.")
    } else if label.is_empty() {
        RestResult::failed("No label selected.")
    } else if !state.has_database(database) {
        RestResult::failed(&format!("unknown database, database={database}"))
    } else {
        RestResult::ok(Some(state.label_state(database, &label)))
    };
    Response::json(200, body)
}

/// `GET /api/{db}/{table}/_schema`, as `TableSchemaAction` answers: the HTTP status repeated
/// in the body's `status`, an `exception` text on failure. Columns are all `VARCHAR` named
/// `c1`, `c2`, ...: the emulator only knows how many there are.
fn table_schema(state: &State, database: &str, table: &str) -> Response {
    #[derive(Serialize)]
    struct Column {
        r#type: &'static str,
        comment: &'static str,
        name: String,
    }
    let failed = |status: u16, text: String| {
        let body = serde_json::json!({ "status": status, "exception": text });
        Response::json(status, to_json(&body))
    };
    if database.is_empty() || table.is_empty() {
        return failed(400, "No database or table selected.".to_owned());
    }
    if !state.has_database(database) {
        return failed(404, format!("Database [{database}] does not exists"));
    }
    let Some(columns) = state.columns(database, table) else {
        return failed(404, format!("Table [{table}] does not exists"));
    };
    let properties: Vec<Column> = (1..=columns)
        .map(|i| Column {
            r#type: "VARCHAR",
            comment: "",
            name: format!("c{i}"),
        })
        .collect();
    let body = serde_json::json!({ "status": 200, "properties": properties });
    Response::json(200, to_json(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_results_keep_the_real_key_order() {
        let ok = String::from_utf8(RestResult::ok(Some("VISIBLE"))).unwrap();
        assert_eq!(
            ok,
            r#"{"state":"VISIBLE","status":"OK","code":"0","msg":"Success","message":"OK"}"#
        );
        let failed = String::from_utf8(RestResult::failed("x")).unwrap();
        assert_eq!(
            failed,
            r#"{"status":"FAILED","code":"1","msg":"x","message":"x"}"#
        );
        let txn = to_json(&TransactionResult {
            status: "FAILED",
            message: "m".into(),
        });
        assert_eq!(
            String::from_utf8(txn).unwrap(),
            r#"{"Status":"FAILED","Message":"m"}"#
        );
    }
}
