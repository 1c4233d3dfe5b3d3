//! sluice loads files from landing directories into StarRocks or CelerData over HTTPS Stream
//! Load, exactly once.
//!
//! Layout:
//! - `config`: the TOML file, its defaults and the validated `Config`.
//! - `watch`: discovery (notify events, scans) and readiness of files.
//! - `label`: the SHA-256 digest of a file and the label derived from it.
//! - `ledger`: the sled store of file records and attempts; the only module that touches sled.
//! - `tls`: rustls client configuration for each `ssl_mode`.
//! - `upload`: the Stream Load client (Expect, redirects, replies); the only HTTP client.
//! - `service`: the pipeline from a ready file to its disposal; `run` and `once`.
//! - `emulator`: the built-in Stream Load server used by `demo`, `emulate` and the tests.
//! - `demo`: the `sluice demo` command.

pub mod config;
pub mod label;
pub mod tls;
pub mod upload;
