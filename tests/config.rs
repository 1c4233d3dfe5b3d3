//! Loading and validating the config file against a real filesystem in temp directories.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::{AfterLoad, Config, ConfigError, Scheme, SslMode};

const PASSWORD: &str = "s3cr3t-Pa55";

/// A temp directory with a landing folder and a private password file, and a builder for
/// config files pointing at them.
struct Fixture {
    root: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("landing")).unwrap();
        let fixture = Fixture {
            root,
            env: HashMap::new(),
        };
        fixture.write_private("password", &format!("{PASSWORD}\n"));
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn write_private(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn env(mut self, name: &str, value: &str) -> Fixture {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The smallest valid file; `{root}` stands for the temp directory.
    fn minimal(&self) -> String {
        self.fill(
            r#"[cluster]
endpoint = "https://fe.example.com:8443"
user = "loader"
password_file = "{root}/password"

[[watch]]
dir = "{root}/landing"
database = "sales"
table = "orders"
"#,
        )
    }

    fn fill(&self, text: &str) -> String {
        text.replace("{root}", &self.root.path().display().to_string())
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        let env = |name: &str| self.env.get(name).cloned();
        Config::parse(text, &self.path("sluice.toml"), &env)
    }

    fn refuse(&self, text: &str) -> ConfigError {
        match self.parse(text) {
            Ok(config) => panic!("accepted: {config:?}\n{text}"),
            Err(err) => err,
        }
    }
}

/// The problem of `key`, with the whole error in the panic message when absent.
fn problem<'e>(err: &'e ConfigError, key: &str) -> &'e sluice::config::Problem {
    err.problems
        .iter()
        .find(|p| p.key == key)
        .unwrap_or_else(|| panic!("no problem for `{key}` in:\n{err}"))
}

#[test]
fn minimal_file_loads_with_the_documented_defaults() {
    let fixture = Fixture::new();
    let config = fixture.parse(&fixture.minimal()).unwrap();

    let cluster = &config.cluster;
    assert_eq!(cluster.endpoint.scheme, Scheme::Https);
    assert_eq!(cluster.endpoint.host, "fe.example.com");
    assert_eq!(cluster.endpoint.port, 8443);
    assert_eq!(cluster.endpoint.to_string(), "https://fe.example.com:8443");
    assert_eq!(cluster.user, "loader");
    assert_eq!(cluster.password.expose(), PASSWORD);
    assert_eq!(cluster.ssl_mode, SslMode::VerifyIdentity);
    assert_eq!(cluster.ca_file, None);
    assert_eq!(cluster.label_keep, Duration::from_secs(3 * 86_400));
    assert_eq!(cluster.timeout, Duration::from_secs(600));
    assert!(!cluster.allow_insecure_http);
    assert!(cluster.redirect_map.is_empty());

    assert_eq!(config.ledger.path, Path::new("/var/lib/sluice/ledger"));

    let load = &config.load;
    assert_eq!(load.max_in_flight, 4);
    assert_eq!(load.settle, Duration::from_secs(5));
    assert_eq!(load.rescan, Duration::from_secs(30));
    assert_eq!(load.retry_initial, Duration::from_secs(5));
    assert_eq!(load.retry_max, Duration::from_secs(300));
    assert_eq!(load.max_attempts, 10);
    assert_eq!(load.shutdown_grace, Duration::from_secs(30));

    let [watch] = config.watches.as_slice() else {
        panic!("{:?}", config.watches);
    };
    let dir = fixture.path("landing");
    assert_eq!(watch.dir, dir);
    assert_eq!(watch.target(), "sales.orders");
    assert_eq!(watch.column_separator, "\\x09");
    assert_eq!(watch.after_load, AfterLoad::Move);
    assert_eq!(watch.label_prefix, "sluice_");
    assert_eq!(watch.ignore, [".*", "*.tmp", "*.part", "*.swp", "*~"]);
    assert_eq!(watch.marker_suffix, None);
    assert_eq!(watch.done_dir, dir.join("done"));
    assert_eq!(watch.failed_dir, dir.join("failed"));
    assert_eq!(watch.work_dir, dir.join(".sluice-work"));
    assert!(watch.headers.is_empty());
    assert!(!watch.work_dir.exists(), "check must not create folders");
}

#[test]
fn load_reads_the_file_from_disk() {
    let fixture = Fixture::new();
    let file = fixture.path("sluice.toml");
    fs::write(&file, fixture.minimal()).unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config.watches[0].table, "orders");

    let err = Config::load(&fixture.path("absent.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("absent.toml: cannot read config file"),
        "{err}"
    );
}

#[test]
fn unknown_key_names_its_line() {
    let fixture = Fixture::new();
    let text = fixture
        .minimal()
        .replace("user = \"loader\"", "user = \"loader\"\nusr = \"x\"");
    let err = fixture.refuse(&text);
    let found = problem(&err, "cluster.usr");
    assert_eq!(found.line, Some(4));
    assert!(
        found.message.contains("unknown field `usr`"),
        "{}",
        found.message
    );
    assert!(
        err.to_string()
            .contains("sluice.toml:4: cluster.usr: unknown field"),
        "{err}"
    );
}

#[test]
fn syntax_error_names_its_line() {
    let fixture = Fixture::new();
    let text = fixture
        .minimal()
        .replace("table = \"orders\"", "table = = \"orders\"");
    let err = fixture.refuse(&text);
    assert_eq!(err.problems[0].line, Some(9), "{err}");
    assert!(err.to_string().contains("sluice.toml:9: "), "{err}");
}

#[test]
fn plain_http_endpoint_is_refused_unless_allowed() {
    let fixture = Fixture::new();
    let text = fixture
        .minimal()
        .replace("https://fe.example.com:8443", "http://fe:8030");
    let err = fixture.refuse(&text);
    let line = format!(
        "{}:2: cluster.endpoint: plain http endpoint `http://fe:8030` refused: set \
         `allow_insecure_http = true` to send credentials in clear",
        fixture.path("sluice.toml").display()
    );
    assert_eq!(err.to_string(), line);

    let allowed = text.replace("user = ", "allow_insecure_http = true\nuser = ");
    let config = fixture.parse(&allowed).unwrap();
    assert_eq!(config.cluster.endpoint.scheme, Scheme::Http);
    assert_eq!(config.cluster.endpoint.port, 8030);
    assert!(config.cluster.allow_insecure_http);

    let default_port = allowed.replace("http://fe:8030", "http://fe");
    assert_eq!(
        fixture.parse(&default_port).unwrap().cluster.endpoint.port,
        80
    );
}

#[test]
fn endpoint_with_credentials_is_refused_without_echoing_them() {
    let fixture = Fixture::new();
    let text = fixture.minimal().replace(
        "https://fe.example.com",
        "https://loader:hunter2@fe.example.com",
    );
    let err = fixture.refuse(&text);
    assert!(
        problem(&err, "cluster.endpoint")
            .message
            .contains("credentials")
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");

    for bad in ["https://fe:8443/api", "https://fe:8443?x=1", "ftp://fe"] {
        let err = fixture.refuse(
            &fixture
                .minimal()
                .replace("https://fe.example.com:8443", bad),
        );
        assert_eq!(problem(&err, "cluster.endpoint").line, Some(2), "{err}");
    }
}

#[test]
fn password_comes_from_env_or_systemd_credential() {
    let fixture = Fixture::new().env("SLUICE_PW", "from-env");
    let text = fixture.minimal().replace(
        &format!(
            "password_file = \"{}/password\"",
            fixture.root.path().display()
        ),
        "password_env = \"SLUICE_PW\"",
    );
    assert_eq!(
        fixture.parse(&text).unwrap().cluster.password.expose(),
        "from-env"
    );

    let credentials = fixture.path("credentials");
    fs::create_dir(&credentials).unwrap();
    fs::write(credentials.join("sluice-password"), "from-credential\n").unwrap();
    let fixture = fixture.env("CREDENTIALS_DIRECTORY", &credentials.display().to_string());
    let text = text.replace(
        "password_env = \"SLUICE_PW\"",
        "password_credential = \"sluice-password\"",
    );
    assert_eq!(
        fixture.parse(&text).unwrap().cluster.password.expose(),
        "from-credential"
    );
}

#[test]
fn credential_without_credentials_directory_says_so() {
    let fixture = Fixture::new();
    let text = fixture.minimal().replace(
        &format!(
            "password_file = \"{}/password\"",
            fixture.root.path().display()
        ),
        "password_credential = \"sluice-password\"",
    );
    let err = fixture.refuse(&text);
    let message = &problem(&err, "cluster.password_credential").message;
    assert!(message.contains("$CREDENTIALS_DIRECTORY"), "{message}");
}

#[test]
fn exactly_one_password_source_is_needed() {
    let fixture = Fixture::new().env("SLUICE_PW", "x");
    let both = fixture
        .minimal()
        .replace("user = ", "password_env = \"SLUICE_PW\"\nuser = ");
    let err = fixture.refuse(&both);
    assert!(
        problem(&err, "cluster.password_file")
            .message
            .contains("exactly one"),
        "{err}"
    );

    let none = fixture.minimal().replace(
        &format!(
            "password_file = \"{}/password\"\n",
            fixture.root.path().display()
        ),
        "",
    );
    let err = fixture.refuse(&none);
    assert!(
        problem(&err, "cluster")
            .message
            .contains("no password source"),
        "{err}"
    );
    assert_eq!(problem(&err, "cluster").line, Some(1));
}

#[test]
fn group_readable_password_file_is_refused() {
    let fixture = Fixture::new();
    fs::set_permissions(fixture.path("password"), fs::Permissions::from_mode(0o640)).unwrap();
    let err = fixture.refuse(&fixture.minimal());
    let found = problem(&err, "cluster.password_file");
    assert_eq!(found.line, Some(4));
    assert!(found.message.contains("chmod 600"), "{}", found.message);
    assert!(!err.to_string().contains(PASSWORD), "{err}");

    fs::set_permissions(fixture.path("password"), fs::Permissions::from_mode(0o604)).unwrap();
    assert!(fixture.parse(&fixture.minimal()).is_err());
}

#[test]
fn missing_password_file_is_named() {
    let fixture = Fixture::new();
    fs::remove_file(fixture.path("password")).unwrap();
    let err = fixture.refuse(&fixture.minimal());
    let message = &problem(&err, "cluster.password_file").message;
    assert!(
        message.contains(&fixture.path("password").display().to_string()),
        "{message}"
    );
    assert!(message.contains("no such file"), "{message}");
}

#[test]
fn missing_env_var_is_named_and_no_value_is_ever_shown() {
    let fixture = Fixture::new().env("OTHER_VAR", PASSWORD);
    let text = fixture.minimal().replace(
        &format!(
            "password_file = \"{}/password\"",
            fixture.root.path().display()
        ),
        "password_env = \"SLUICE_PASSWORD\"",
    );
    let err = fixture.refuse(&text);
    let found = problem(&err, "cluster.password_env");
    assert_eq!(
        found.message,
        "environment variable `SLUICE_PASSWORD` is not set"
    );

    // A password that was read must not leak through the problems of other keys either.
    let fixture = fixture.env("SLUICE_PASSWORD", PASSWORD);
    let err = fixture.refuse(&text.replace("table = \"orders\"", "table = \"a/b\""));
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    assert!(!format!("{err:?}").contains(PASSWORD), "{err:?}");
}

#[test]
fn debug_of_config_never_contains_the_password() {
    let fixture = Fixture::new();
    let config = fixture.parse(&fixture.minimal()).unwrap();
    assert_eq!(config.cluster.password.expose(), PASSWORD);
    let debug = format!("{config:?} {config:#?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(debug.contains("Secret(***)"), "{debug}");
}

#[test]
fn bad_duration_names_key_and_line() {
    let fixture = Fixture::new();
    let text = format!("{}\n[load]\nsettle = \"5 parsecs\"\n", fixture.minimal());
    let err = fixture.refuse(&text);
    let found = problem(&err, "load.settle");
    assert_eq!(found.line, Some(12));
    assert!(
        found.message.starts_with("invalid duration `5 parsecs`"),
        "{}",
        found.message
    );
    assert!(
        err.to_string()
            .contains("sluice.toml:12: load.settle: invalid duration"),
        "{err}"
    );
}

#[test]
fn several_problems_are_reported_at_once_with_their_lines() {
    let fixture = Fixture::new();
    let text = fixture.fill(
        r#"[cluster]
endpoint = "http://fe:8030"
user = 5
password_file = "{root}/password"
colour = "blue"

[load]
max_in_flight = 0
retry_initial = "1m"
retry_max = "10s"
settle = "soon"

[[watch]]
dir = "{root}/landing"
database = "sales"
table = "orders"
after_load = "shred"

[[watch]]
dir = "{root}/nowhere"
table = "has space"
"#,
    );
    let err = fixture.refuse(&text);
    let seen: Vec<(Option<usize>, &str)> = err
        .problems
        .iter()
        .map(|p| (p.line, p.key.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some(2), "cluster.endpoint"),
            (Some(3), "cluster.user"),
            (Some(5), "cluster.colour"),
            (Some(8), "load.max_in_flight"),
            (Some(10), "load.retry_max"),
            (Some(11), "load.settle"),
            (Some(17), "watch[0].after_load"),
            (Some(19), "watch[1].database"),
            (Some(20), "watch[1].dir"),
            (Some(21), "watch[1].table"),
        ],
        "{err}"
    );
    assert_eq!(err.to_string().lines().count(), seen.len());
    // A key serde refused is not also reported as missing.
    assert_eq!(
        err.problems
            .iter()
            .filter(|p| p.key == "cluster.user")
            .count(),
        1
    );
}

#[test]
fn missing_sections_and_required_keys_are_named() {
    let fixture = Fixture::new();
    let err = fixture.refuse("[load]\nmax_in_flight = 2\n");
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["cluster", "watch"], "{err}");
    assert_eq!(err.problems[0].line, None);

    let err = fixture.refuse(&fixture.fill(
        "[cluster]\npassword_file = \"{root}/password\"\n\n[[watch]]\ndir = \"{root}/landing\"\n",
    ));
    for key in [
        "cluster.endpoint",
        "cluster.user",
        "watch[0].database",
        "watch[0].table",
    ] {
        assert!(problem(&err, key).message.contains("missing"), "{err}");
    }
    assert_eq!(problem(&err, "cluster.endpoint").line, Some(1));
    assert_eq!(problem(&err, "watch[0].table").line, Some(4));
}

#[test]
fn headers_sluice_sets_itself_are_refused() {
    let fixture = Fixture::new();
    for name in [
        "label",
        "Expect",
        "AUTHORIZATION",
        "content-length",
        "Transfer-Encoding",
        "host",
    ] {
        let text = format!("{}[watch.headers]\n{name} = \"x\"\n", fixture.minimal());
        let err = fixture.refuse(&text);
        let found = problem(&err, &format!("watch[0].headers.{name}"));
        assert_eq!(found.line, Some(11), "{err}");
        assert!(
            found.message.contains("set by sluice itself"),
            "{}",
            found.message
        );
    }

    let text = format!(
        "{}[watch.headers]\ncolumn_separator = \",\"\n",
        fixture.minimal()
    );
    let err = fixture.refuse(&text);
    let message = &problem(&err, "watch[0].headers.column_separator").message;
    assert!(message.contains("`watch[0].column_separator`"), "{message}");

    let text = format!("{}[watch.headers]\nskip_header = 1\n", fixture.minimal());
    let err = fixture.refuse(&text);
    assert!(
        problem(&err, "watch[0].headers.skip_header")
            .message
            .contains("string"),
        "{err}"
    );

    let text = format!(
        "{}[watch.headers]\nrow_delimiter = \"\\n\"\n",
        fixture.minimal()
    );
    let err = fixture.refuse(&text);
    assert!(
        problem(&err, "watch[0].headers.row_delimiter")
            .message
            .contains("hex"),
        "{err}"
    );

    let text = format!(
        "{}[watch.headers]\nskip_header = \"1\"\nmax_filter_ratio = \"0.1\"\n",
        fixture.minimal()
    );
    let headers = &fixture.parse(&text).unwrap().watches[0].headers;
    assert_eq!(headers["skip_header"], "1");
    assert_eq!(headers["max_filter_ratio"], "0.1");
}

#[test]
fn column_separator_hex_forms_and_length() {
    let fixture = Fixture::new();
    let with = |value: &str| {
        let text = format!("{}column_separator = {value}\n", fixture.minimal());
        fixture.parse(&text)
    };
    let separator = |value: &str| with(value).unwrap().watches[0].column_separator.clone();

    assert_eq!(separator(r#"",""#), ",");
    assert_eq!(separator(r#""||""#), "||");
    assert_eq!(separator(r"'\x01'"), "\\x01");
    assert_eq!(separator(r#""0x0D0A""#), "0x0D0A");
    // A TOML escape yields the character itself, which HTTP cannot carry bare.
    assert_eq!(separator(r#""\t""#), "\\x09");
    assert_eq!(separator(r#""\u0001""#), "\\x01");
    assert_eq!(separator(&format!("'\\x{}'", "ab".repeat(50))).len(), 102);

    for bad in [
        r"'\x1'".to_owned(),
        r"'0xZZ'".to_owned(),
        r#""""#.to_owned(),
        format!("'\\x{}'", "ab".repeat(51)),
        format!("\"{}\"", "|".repeat(51)),
    ] {
        let err = with(&bad).unwrap_err();
        assert_eq!(
            problem(&err, "watch[0].column_separator").line,
            Some(10),
            "{bad}: {err}"
        );
    }
    let err = with(r"'\x123'").unwrap_err();
    assert!(
        problem(&err, "watch[0].column_separator")
            .message
            .contains("odd number")
    );
}

#[test]
fn two_watches_on_one_dir_are_refused_but_one_table_twice_is_fine() {
    let fixture = Fixture::new();
    let second = fixture.fill(
        "\n[[watch]]\ndir = \"{root}/./landing/\"\ndatabase = \"sales\"\ntable = \"orders\"\n",
    );
    let err = fixture.refuse(&format!("{}{second}", fixture.minimal()));
    let found = problem(&err, "watch[1].dir");
    assert_eq!(found.line, Some(12));
    assert!(
        found.message.contains("already watched by `watch[0]`"),
        "{}",
        found.message
    );

    fs::create_dir(fixture.path("landing2")).unwrap();
    let other = second.replace("/./landing/", "/landing2");
    let config = fixture
        .parse(&format!("{}{other}", fixture.minimal()))
        .unwrap();
    assert_eq!(config.watches.len(), 2);
    assert_eq!(config.watches[0].target(), config.watches[1].target());
}

#[test]
fn relative_paths_are_resolved_against_the_config_files_directory() {
    let fixture = Fixture::new();
    fs::create_dir(fixture.path("conf")).unwrap();
    fs::create_dir(fixture.path("conf/in")).unwrap();
    let text = r#"
[cluster]
endpoint = "https://fe.example.com"
user = "loader"
password_file = "../password"

[ledger]
path = "state/ledger"

[[watch]]
dir = "./in"
database = "sales"
table = "orders"
done_dir = "in/loaded"
"#;
    let origin = fixture.path("conf/sluice.toml");
    let config = Config::parse(text, &origin, &|_| None).unwrap();
    let conf = fixture.path("conf");
    assert_eq!(config.cluster.password.expose(), PASSWORD);
    assert_eq!(config.ledger.path, conf.join("state/ledger"));
    assert_eq!(config.watches[0].dir, conf.join("in"));
    assert_eq!(config.watches[0].done_dir, conf.join("in/loaded"));
    assert_eq!(config.watches[0].work_dir, conf.join("in/.sluice-work"));
}

#[test]
fn watched_dir_must_exist_and_be_a_directory() {
    let fixture = Fixture::new();
    fs::write(fixture.path("plain"), "x").unwrap();
    let text = fixture.minimal().replace("/landing", "/plain");
    let err = fixture.refuse(&text);
    assert!(
        problem(&err, "watch[0].dir")
            .message
            .contains("not a directory"),
        "{err}"
    );
}

#[test]
fn folders_on_another_filesystem_are_refused() {
    let fixture = Fixture::new();
    let shm = Path::new("/dev/shm");
    let device = |path: &Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(path).unwrap());
    if !shm.is_dir() || device(shm) == device(fixture.root.path()) {
        eprintln!("skipped: no second filesystem to compare with");
        return;
    }
    let text = format!("{}done_dir = \"/dev/shm/sluice-done\"\n", fixture.minimal());
    let err = fixture.refuse(&text);
    let found = problem(&err, "watch[0].done_dir");
    assert!(
        found.message.contains("another filesystem"),
        "{}",
        found.message
    );
}

#[test]
fn names_labels_globs_and_limits_are_checked() {
    let fixture = Fixture::new();
    let cases = [
        (
            "table = \"orders\"",
            "table = \"orders?x\"",
            "watch[0].table",
        ),
        (
            "database = \"sales\"",
            "database = \"\"",
            "watch[0].database",
        ),
        (
            "table = \"orders\"",
            "table = \"o\"\nlabel_prefix = \"a.b\"",
            "watch[0].label_prefix",
        ),
        (
            "table = \"orders\"",
            "table = \"o\"\nignore = [\"[a\"]",
            "watch[0].ignore[0]",
        ),
        (
            "table = \"orders\"",
            "table = \"o\"\nmarker_suffix = \"\"",
            "watch[0].marker_suffix",
        ),
        ("user = \"loader\"", "user = \"a:b\"", "cluster.user"),
        (
            "user = \"loader\"",
            "user = \"l\"\nssl_mode = \"strict\"",
            "cluster.ssl_mode",
        ),
        (
            "user = \"loader\"",
            "user = \"l\"\nlabel_keep = \"0s\"",
            "cluster.label_keep",
        ),
    ];
    for (from, to, key) in cases {
        let err = fixture.refuse(&fixture.minimal().replace(from, to));
        assert!(problem(&err, key).line.is_some(), "{err}");
    }

    let long = "p".repeat(sluice::label::max_prefix_len() + 1);
    let text = format!("{}label_prefix = \"{long}\"\n", fixture.minimal());
    assert!(
        fixture
            .refuse(&text)
            .to_string()
            .contains("watch[0].label_prefix")
    );
    let fits = long[1..].to_owned();
    let text = format!("{}label_prefix = \"{fits}\"\n", fixture.minimal());
    assert_eq!(fixture.parse(&text).unwrap().watches[0].label_prefix, fits);

    for value in ["0", "257"] {
        let text = format!("{}\n[load]\nmax_in_flight = {value}\n", fixture.minimal());
        assert!(
            fixture
                .refuse(&text)
                .to_string()
                .contains("load.max_in_flight")
        );
    }
    let text = format!(
        "{}\n[load]\nmax_in_flight = 256\nmax_attempts = 1\n",
        fixture.minimal()
    );
    assert_eq!(fixture.parse(&text).unwrap().load.max_in_flight, 256);
}

#[test]
fn redirect_map_sides_are_validated_and_normalized() {
    let fixture = Fixture::new();
    let text = format!(
        "{}\n[cluster.redirect_map]\n\"BE1.internal:8040\" = \"be1.example.com:8443\"\n",
        fixture.minimal()
    );
    let config = fixture.parse(&text).unwrap();
    assert_eq!(
        config.cluster.redirect_map["be1.internal:8040"],
        "be1.example.com:8443"
    );

    let text = format!(
        "{}\n[cluster.redirect_map]\n\"be1:8040\" = \"be1.example.com\"\n",
        fixture.minimal()
    );
    let err = fixture.refuse(&text);
    let found = problem(&err, "cluster.redirect_map.\"be1:8040\"");
    assert_eq!(found.line, Some(12), "{err}");
    assert!(found.message.contains("needs a port"), "{}", found.message);
}

#[test]
fn ca_file_must_hold_a_certificate() {
    let fixture = Fixture::new();
    let cert = rcgen::generate_simple_self_signed(vec!["fe.example.com".to_owned()]).unwrap();
    fs::write(fixture.path("ca.pem"), cert.cert.pem()).unwrap();
    fs::write(fixture.path("empty.pem"), "not a certificate\n").unwrap();
    let with = |name: &str| {
        let line = format!("ca_file = \"{name}\"\nuser = ");
        fixture.parse(&fixture.minimal().replace("user = ", &line))
    };

    assert_eq!(
        with("ca.pem").unwrap().cluster.ca_file,
        Some(fixture.path("ca.pem"))
    );
    for bad in ["empty.pem", "absent.pem"] {
        let err = with(bad).unwrap_err();
        assert_eq!(problem(&err, "cluster.ca_file").line, Some(3), "{err}");
    }
}

#[test]
fn the_example_config_loads_once_its_paths_exist() {
    let fixture = Fixture::new();
    let example = include_str!("../config.example.toml");
    let landing = fixture.path("landing");
    let cert = rcgen::generate_simple_self_signed(vec!["fe.example.com".to_owned()]).unwrap();
    let ca = fixture.path("ca.pem");
    fs::write(&ca, cert.cert.pem()).unwrap();

    let text = example
        .replace("/srv/landing/orders", &landing.display().to_string())
        .replace(
            "/etc/sluice/password",
            &fixture.path("password").display().to_string(),
        )
        .replace("/etc/sluice/ca.pem", &ca.display().to_string())
        .replace(
            "/var/lib/sluice/ledger",
            &fixture.path("ledger").display().to_string(),
        );
    let config = fixture.parse(&text).unwrap_or_else(|err| panic!("{err}"));

    assert_eq!(
        config.cluster.endpoint.to_string(),
        "https://fe.example.com:8443"
    );
    assert_eq!(config.cluster.password.expose(), PASSWORD);
    assert_eq!(config.cluster.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(
        config.cluster.redirect_map["10.0.0.12:8040"],
        "be1.example.com:8443"
    );
    let watch = &config.watches[0];
    assert_eq!(watch.dir, landing);
    assert_eq!(watch.target(), "sales.orders");
    assert_eq!(watch.column_separator, ",");
    assert_eq!(watch.headers["skip_header"], "1");
    assert_eq!(watch.headers["max_filter_ratio"], "0.01");
    assert_eq!(watch.work_dir, landing.join(".sluice-work"));
}

#[test]
fn a_shared_dir_is_reported_even_when_the_watch_has_other_problems() {
    let fixture = Fixture::new();
    let second = fixture.fill("\n[[watch]]\ndir = \"{root}/landing\"\ntable = \"has space\"\n");
    let err = fixture.refuse(&format!("{}{second}", fixture.minimal()));
    assert!(
        problem(&err, "watch[1].dir")
            .message
            .contains("already watched"),
        "{err}"
    );
    assert!(
        problem(&err, "watch[1].table").message.contains("a space"),
        "{err}"
    );
    assert!(
        problem(&err, "watch[1].database")
            .message
            .contains("missing"),
        "{err}"
    );
}

#[test]
fn a_done_or_failed_folder_that_is_another_watchs_landing_folder_is_refused() {
    let fixture = Fixture::new();
    fs::create_dir(fixture.path("other")).unwrap();
    for key in ["done_dir", "failed_dir"] {
        let text = fixture.fill(&format!(
            "[cluster]\nendpoint = \"https://fe.example.com:8443\"\nuser = \"loader\"\n\
             password_file = \"{{root}}/password\"\n\n\
             [[watch]]\ndir = \"{{root}}/landing\"\ndatabase = \"sales\"\ntable = \"orders\"\n\
             {key} = \"{{root}}/other\"\n\n\
             [[watch]]\ndir = \"{{root}}/other\"\ndatabase = \"sales\"\ntable = \"returns\"\n"
        ));
        let err = fixture.refuse(&text);
        let found = problem(&err, &format!("watch[0].{key}"));
        assert_eq!(found.line, Some(10), "{err}");
        assert!(
            found.message.contains("landing folder of `watch[1]`"),
            "{err}"
        );
        assert!(found.message.contains("sales.returns"), "{err}");
    }
}
