//! The config file as written: the serde shape, and every default in one place.
//!
//! Every field is optional here, even the required ones: `Document::deserialize_all` drops the
//! entries serde refuses and tries again, which only terminates cleanly when no field is
//! required. Whether a key must be present is a rule of `validate`, like every other rule.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Defaults and limits of every key; the operator-facing text in `config.example.toml` and the
/// doc comments of the `Config` types repeat them.
pub(super) mod defaults {
    use std::time::Duration;

    use crate::config::{AfterLoad, SslMode};

    /// `[cluster]`
    pub(crate) const ALLOW_INSECURE_HTTP: bool = false;
    pub(crate) const SSL_MODE: SslMode = SslMode::VerifyIdentity;
    pub(crate) const LABEL_KEEP: Duration = Duration::from_secs(3 * 24 * 60 * 60);
    pub(crate) const TIMEOUT: Duration = Duration::from_secs(10 * 60);

    /// `[ledger]`: the usual state directory of a systemd service named `sluice`
    /// (`StateDirectory=sluice`).
    pub(crate) const LEDGER_PATH: &str = "/var/lib/sluice/ledger";

    /// `[load]`
    pub(crate) const MAX_ATTEMPTS: i64 = 10;
    pub(crate) const MAX_IN_FLIGHT: i64 = 4;
    pub(crate) const MAX_IN_FLIGHT_LIMIT: i64 = 256;
    pub(crate) const RESCAN: Duration = Duration::from_secs(30);
    pub(crate) const RETRY_INITIAL: Duration = Duration::from_secs(5);
    pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
    pub(crate) const SETTLE: Duration = Duration::from_secs(5);
    pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

    /// `[[watch]]`. The separator is the cluster's own default, tab, in the cluster's hex form
    /// because HTTP trims a bare tab from a header value.
    pub(crate) const AFTER_LOAD: AfterLoad = AfterLoad::Move;
    pub(crate) const COLUMN_SEPARATOR: &str = "\\x09";
    pub(crate) const DONE_DIR: &str = "done";
    pub(crate) const FAILED_DIR: &str = "failed";
    /// The same list as `crate::watch` uses when no `ignore` is given.
    pub(crate) const IGNORE: &[&str] = &[".*", "*.tmp", "*.part", "*.swp", "*~"];
    pub(crate) const LABEL_PREFIX: &str = crate::label::DEFAULT_PREFIX;
    /// Longest separator the cluster accepts, in bytes after decoding the hex form.
    pub(crate) const MAX_COLUMN_SEPARATOR_BYTES: usize = 50;
    pub(crate) const WORK_DIR: &str = ".sluice-work";
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) cluster: Option<ClusterFile>,
    pub(super) ledger: Option<LedgerFile>,
    pub(super) load: Option<LoadFile>,
    pub(super) metrics: Option<MetricsFile>,
    pub(super) watch: Option<Vec<WatchFile>>,
}

/// `[cluster]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterFile {
    pub(super) allow_insecure_http: Option<bool>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) client_cert: Option<PathBuf>,
    pub(super) client_key: Option<PathBuf>,
    pub(super) endpoint: Option<String>,
    pub(super) label_keep: Option<String>,
    pub(super) password_credential: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) redirect_map: Option<BTreeMap<String, String>>,
    pub(super) ssl_mode: Option<SslModeFile>,
    pub(super) timeout: Option<String>,
    pub(super) user: Option<String>,
}

/// The values of `cluster.ssl_mode`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SslModeFile {
    Required,
    VerifyCa,
    VerifyIdentity,
}

/// `[ledger]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LedgerFile {
    pub(super) path: Option<PathBuf>,
}

/// `[load]`. Integers are `i64` so that range checks, not serde, word the message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoadFile {
    pub(super) max_attempts: Option<i64>,
    pub(super) max_in_flight: Option<i64>,
    pub(super) rescan: Option<String>,
    pub(super) retry_initial: Option<String>,
    pub(super) retry_max: Option<String>,
    pub(super) settle: Option<String>,
    pub(super) shutdown_grace: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsFile {
    pub(super) listen: Option<String>,
}

/// One `[[watch]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WatchFile {
    pub(super) after_load: Option<AfterLoadFile>,
    pub(super) column_separator: Option<String>,
    pub(super) database: Option<String>,
    pub(super) dir: Option<PathBuf>,
    pub(super) done_dir: Option<PathBuf>,
    pub(super) failed_dir: Option<PathBuf>,
    pub(super) headers: Option<BTreeMap<String, String>>,
    pub(super) ignore: Option<Vec<String>>,
    pub(super) label_prefix: Option<String>,
    pub(super) marker_suffix: Option<String>,
    pub(super) table: Option<String>,
    pub(super) work_dir: Option<PathBuf>,
}

/// The values of `watch.after_load`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum AfterLoadFile {
    Delete,
    Keep,
    Move,
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use serde::de::value::{Error, StrDeserializer};
    use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
    use serde::forward_to_deserialize_any;

    use super::*;

    /// Every key path the file shape accepts (`cluster.endpoint`, `watch.headers`), read from
    /// serde's own field lists so that a new field cannot be forgotten here.
    fn accepted_keys() -> Vec<String> {
        let keys = RefCell::new(Vec::new());
        let recorder = Recorder {
            prefix: String::new(),
            keys: &keys,
        };
        FileConfig::deserialize(recorder).unwrap();
        keys.into_inner()
    }

    /// A deserializer that feeds every struct one placeholder per field and records the names.
    struct Recorder<'a> {
        prefix: String,
        keys: &'a RefCell<Vec<String>>,
    }

    impl<'de> de::Deserializer<'de> for Recorder<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(de::Error::custom(format!(
                "no placeholder for `{}`",
                self.prefix
            )))
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_map(Fields {
                fields: fields.iter(),
                current: "",
                prefix: self.prefix,
                keys: self.keys,
            })
        }

        fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_seq(OneElement {
                recorder: Some(self),
            })
        }

        fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let empty = std::iter::empty::<(String, String)>();
            visitor.visit_map(de::value::MapDeserializer::new(empty))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            let first: StrDeserializer<'_, Error> = variants[0].into_deserializer();
            visitor.visit_enum(first)
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_str("")
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_str("")
        }

        fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_bool(false)
        }

        fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_i64(0)
        }

        forward_to_deserialize_any! {
            i8 i16 i32 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit unit_struct
            newtype_struct tuple tuple_struct identifier ignored_any
        }
    }

    struct Fields<'a> {
        fields: std::slice::Iter<'static, &'static str>,
        current: &'static str,
        prefix: String,
        keys: &'a RefCell<Vec<String>>,
    }

    impl<'de> MapAccess<'de> for Fields<'_> {
        type Error = Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, Error> {
            let Some(field) = self.fields.next() else {
                return Ok(None);
            };
            self.current = field;
            self.keys
                .borrow_mut()
                .push(format!("{}{field}", self.prefix));
            let name: StrDeserializer<'_, Error> = field.into_deserializer();
            seed.deserialize(name).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
            seed.deserialize(Recorder {
                prefix: format!("{}{}.", self.prefix, self.current),
                keys: self.keys,
            })
        }
    }

    struct OneElement<'a> {
        recorder: Option<Recorder<'a>>,
    }

    impl<'de> SeqAccess<'de> for OneElement<'_> {
        type Error = Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, Error> {
            match self.recorder.take() {
                Some(recorder) => seed.deserialize(recorder).map(Some),
                None => Ok(None),
            }
        }
    }

    /// Whether `example` mentions `key`: as a table header, or as `name =` (possibly commented
    /// out) inside its table.
    fn mentions(example: &str, key: &str) -> bool {
        let (table, name) = key.rsplit_once('.').unwrap_or(("", key));
        let mut current = String::new();
        for line in example.lines().map(str::trim) {
            if line.starts_with('[') {
                current = line.trim_matches(['[', ']']).to_owned();
                if current == key {
                    return true;
                }
                continue;
            }
            let assignment = line.trim_start_matches(['#', ' ']);
            let is_key = assignment
                .strip_prefix(name)
                .is_some_and(|rest| rest.trim_start().starts_with('='));
            if current == table && is_key {
                return true;
            }
        }
        false
    }

    #[test]
    fn the_example_shows_every_key() {
        let example = include_str!("../../config.example.toml");
        let keys = accepted_keys();
        assert!(keys.len() > 30, "{keys:?}");
        for must in [
            "cluster.endpoint",
            "cluster.redirect_map",
            "watch.headers",
            "ledger.path",
        ] {
            assert!(keys.iter().any(|key| key == must), "{must} not in {keys:?}");
        }
        let missing: Vec<_> = keys.iter().filter(|key| !mentions(example, key)).collect();
        assert!(
            missing.is_empty(),
            "not in config.example.toml: {missing:?}"
        );
    }

    #[test]
    fn every_config_field_has_a_key_in_the_file() {
        // Exhaustive patterns: a field added to the validated types breaks this build until
        // the file shape (and with it the example) has its key.
        use crate::config::{
            ClusterConfig, Config, LedgerConfig, LoadConfig, MetricsConfig, WatchConfig,
        };
        let keys = accepted_keys();
        let has = |key: &str| keys.iter().any(|k| k == key);
        let check = |config: &Config| {
            let Config {
                cluster,
                ledger,
                load,
                metrics,
                watches,
            } = config;
            let MetricsConfig { listen: _ } = metrics;
            let ClusterConfig {
                allow_insecure_http: _,
                ca_file: _,
                client_cert: _,
                client_key: _,
                endpoint: _,
                label_keep: _,
                password: _,
                redirect_map: _,
                ssl_mode: _,
                timeout: _,
                user: _,
            } = cluster;
            let LedgerConfig { path: _ } = ledger;
            let LoadConfig {
                max_in_flight: _,
                max_attempts: _,
                rescan: _,
                retry_initial: _,
                retry_max: _,
                settle: _,
                shutdown_grace: _,
            } = load;
            for watch in watches {
                let WatchConfig {
                    after_load: _,
                    column_separator: _,
                    database: _,
                    dir: _,
                    done_dir: _,
                    failed_dir: _,
                    headers: _,
                    ignore: _,
                    label_prefix: _,
                    marker_suffix: _,
                    table: _,
                    work_dir: _,
                } = watch;
            }
        };
        let _ = check;
        for field in [
            "cluster.allow_insecure_http",
            "cluster.ca_file",
            "cluster.client_cert",
            "cluster.client_key",
            "cluster.endpoint",
            "cluster.label_keep",
            "cluster.password_file",
            "cluster.redirect_map",
            "cluster.ssl_mode",
            "cluster.timeout",
            "cluster.user",
            "ledger.path",
            "load.max_in_flight",
            "load.max_attempts",
            "load.rescan",
            "load.retry_initial",
            "load.retry_max",
            "load.settle",
            "load.shutdown_grace",
            "metrics.listen",
            "watch.after_load",
            "watch.column_separator",
            "watch.database",
            "watch.dir",
            "watch.done_dir",
            "watch.failed_dir",
            "watch.headers",
            "watch.ignore",
            "watch.label_prefix",
            "watch.marker_suffix",
            "watch.table",
            "watch.work_dir",
        ] {
            assert!(has(field), "{field} is not a key of the file");
        }
    }
}
