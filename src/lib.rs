//! sluice loads files from landing directories into StarRocks or CelerData over HTTPS Stream
//! Load, exactly once.
//!
//! Layout:
//! - `cli`: the command line (parsing only); `commands`: what each command does, exit codes.
//! - `config`: the TOML file, its defaults and the validated `Config`.
//! - `watch`: discovery (notify events, scans) and readiness of files.
//! - `label`: the SHA-256 digest of a file and the label derived from it.
//! - `ledger`: the sled store of file records and attempts, and their SHA-256 chain; the only
//!   module that touches sled.
//! - `audit`: the auditors' side of the ledger (list, show, export, verify, stats) and the
//!   read-only socket through which the ledger commands ask a running service.
//! - `tls`: rustls client configuration for each `ssl_mode`.
//! - `upload`: the Stream Load client (Expect, redirects, replies); the only HTTP client.
//! - `service`: the pipeline from a ready file to its disposal; `run` and `once`.
//! - `emulator`: the built-in Stream Load server used by `demo`, `emulate` and the tests.
//! - `demo`: the `sluice demo` command.
//! - `doctor`: the `sluice doctor` command: reach the cluster, one check per line.
//! - `notify`: the systemd notify protocol (ready, status, stopping, watchdog).
//! - `metrics`: Prometheus text from a service snapshot; its HTTP server and file writer.
//! - `progress`: the progress bar and summary table of `sluice once`.
//! - `logging`: the log subscriber (filters, JSON, the journal's priorities).

pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod emulator;
pub mod label;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod service;
pub mod tls;
pub mod upload;
pub mod watch;
