//! The rules of `[[watch]]`: the landing directory, its target, its folders and its headers.
//!
//! The work, done and failed folders must be on the landing directory's filesystem because a
//! claim and a disposal are renames; they are created at run time, so only their nearest
//! existing ancestor is checked here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use globset::Glob;
use http::{HeaderName, HeaderValue};

use crate::config::document::KeyPath;
use crate::config::file::{AfterLoadFile, WatchFile, defaults};
use crate::config::validate::Checker;
use crate::config::{AfterLoad, WatchConfig};
use crate::label;

/// Headers sluice sets itself on every load; a watch may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-length",
    "expect",
    "host",
    "label",
    "transfer-encoding",
];

/// Checks every `[[watch]]` and that no two watch the same directory.
pub(super) fn build_watches(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    watches: Option<Vec<WatchFile>>,
) -> Vec<WatchConfig> {
    let watches = watches.unwrap_or_default();
    if watches.is_empty() && !checker.is_refused(path) {
        checker.report(path, "at least one `[[watch]]` is needed");
    }

    let mut built = Vec::new();
    let mut seen_dirs = HashMap::new();
    for (index, watch) in watches.into_iter().enumerate() {
        if let Some(config) = build_watch(checker, path, index, watch, &mut seen_dirs) {
            built.push((index, config));
        }
    }
    ensure_no_folder_is_a_landing_folder(checker, path, &built);
    built.into_iter().map(|(_, config)| config).collect()
}

/// Reports a done, failed or working folder that is another watch's landing folder: every
/// file moved there would be loaded a second time, into that watch's table.
fn ensure_no_folder_is_a_landing_folder(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    built: &[(usize, WatchConfig)],
) {
    let identity = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    for (index, watch) in built {
        let folders = [
            ("done_dir", &watch.done_dir),
            ("failed_dir", &watch.failed_dir),
            ("work_dir", &watch.work_dir),
        ];
        for (key, folder) in folders {
            let folder_id = identity(folder);
            let Some((other, landing)) = built
                .iter()
                .find(|(other, w)| other != index && identity(&w.dir) == folder_id)
            else {
                continue;
            };
            checker.report(
                &path.index(*index).key(key),
                format!(
                    "`{}` is the landing folder of `watch[{other}]`: files moved there would \
                     be loaded again, into `{}`",
                    folder.display(),
                    landing.target()
                ),
            );
        }
    }
}

/// Reports a directory that an earlier watch (its index in `seen_dirs`) already watches.
fn ensure_unwatched(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    dir: &Path,
    seen_dirs: &mut HashMap<PathBuf, usize>,
    index: usize,
) {
    // Symlinks and `..` would otherwise hide that two watches share a directory.
    let identity = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if let Some(first) = seen_dirs.get(&identity) {
        checker.report(
            path,
            format!("`{}` is already watched by `watch[{first}]`", dir.display()),
        );
    } else {
        seen_dirs.insert(identity, index);
    }
}

fn build_watch(
    checker: &mut Checker<'_>,
    watches_path: &KeyPath,
    index: usize,
    watch: WatchFile,
    seen_dirs: &mut HashMap<PathBuf, usize>,
) -> Option<WatchConfig> {
    let path = &watches_path.index(index);
    let dir_path = path.key("dir");
    let dir = build_dir(checker, &dir_path, watch.dir.as_deref());
    if let Some(dir) = &dir {
        ensure_unwatched(checker, &dir_path, dir, seen_dirs, index);
    }
    let database = build_name(checker, &path.key("database"), watch.database.as_deref());
    let table = build_name(checker, &path.key("table"), watch.table.as_deref());

    let column_separator = match watch.column_separator.as_deref() {
        None => Some(defaults::COLUMN_SEPARATOR.to_owned()),
        Some(raw) => normalize_column_separator(raw)
            .map_err(|why| checker.report(&path.key("column_separator"), why))
            .ok(),
    };
    let after_load = match watch.after_load {
        None => defaults::AFTER_LOAD,
        Some(AfterLoadFile::Delete) => AfterLoad::Delete,
        Some(AfterLoadFile::Keep) => AfterLoad::Keep,
        Some(AfterLoadFile::Move) => AfterLoad::Move,
    };
    let label_prefix = build_label_prefix(checker, &path.key("label_prefix"), watch.label_prefix);
    let ignore = build_ignore(checker, &path.key("ignore"), watch.ignore);
    let marker_suffix =
        build_marker_suffix(checker, &path.key("marker_suffix"), watch.marker_suffix);
    let headers = build_headers(checker, path, watch.headers.unwrap_or_default());

    let dir = dir?;
    let mut folder = |key: &str, given: Option<&Path>, default: &str| {
        let key_path = path.key(key);
        let folder = match given {
            Some(given) => checker.resolve_path(&key_path, given)?,
            None => dir.join(default),
        };
        match ensure_same_filesystem(&dir, &folder) {
            Ok(()) => Some(folder),
            Err(why) => {
                checker.report(&key_path, why);
                None
            }
        }
    };
    let done_dir = folder("done_dir", watch.done_dir.as_deref(), defaults::DONE_DIR);
    let failed_dir = folder(
        "failed_dir",
        watch.failed_dir.as_deref(),
        defaults::FAILED_DIR,
    );
    let work_dir = folder("work_dir", watch.work_dir.as_deref(), defaults::WORK_DIR);
    let (done_dir, failed_dir, work_dir) = (done_dir?, failed_dir?, work_dir?);
    ensure_distinct_folders(checker, path, &dir, [&done_dir, &failed_dir, &work_dir]);

    Some(WatchConfig {
        after_load,
        column_separator: column_separator?,
        database: database?,
        dir,
        done_dir,
        failed_dir,
        headers: headers?,
        ignore: ignore?,
        label_prefix: label_prefix?,
        marker_suffix: marker_suffix?,
        table: table?,
        work_dir,
    })
}

fn build_dir(checker: &mut Checker<'_>, path: &KeyPath, dir: Option<&Path>) -> Option<PathBuf> {
    let dir = checker.require(path, dir)?;
    let dir = checker.resolve_path(path, dir)?;
    let why = match std::fs::metadata(&dir) {
        Ok(metadata) if metadata.is_dir() => return Some(dir),
        Ok(_) => format!("`{}` is not a directory", dir.display()),
        Err(err) => format!(
            "cannot use `{}`: {}",
            dir.display(),
            crate::config::error::describe_io(&err)
        ),
    };
    checker.report(path, why);
    None
}

/// Database and table names go into the URL path `/api/<database>/<table>/_stream_load`
/// unescaped, so anything that would end or escape a path segment is refused.
fn build_name(checker: &mut Checker<'_>, path: &KeyPath, name: Option<&str>) -> Option<String> {
    let name = checker.require(path, name)?;
    let bad = name.chars().find(|&c| {
        matches!(c, '/' | '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control()
    });
    let why = match bad {
        _ if name.is_empty() => "must not be empty".to_owned(),
        Some(c) => format!(
            "`{}` holds {}, which cannot go into the URL path",
            name.escape_debug(),
            describe_char(c)
        ),
        None => return Some(name.to_owned()),
    };
    checker.report(path, why);
    None
}

fn describe_char(c: char) -> String {
    if c == ' ' {
        "a space".to_owned()
    } else if c.is_whitespace() || c.is_control() {
        format!("the character U+{:04X}", u32::from(c))
    } else {
        format!("`{c}`")
    }
}

/// The separator as the cluster will read it: a hex form (`\x01`, `0x0D0A`) is checked and kept;
/// text with control characters (a TOML `"\t"`, `"\u0001"`) is put in hex form, because HTTP
/// would trim or refuse them in a header; other text is kept as written.
///
/// # Errors
///
/// Empty, malformed hex, or longer than the cluster's 50 bytes.
pub(super) fn normalize_column_separator(raw: &str) -> Result<String, String> {
    let limit = defaults::MAX_COLUMN_SEPARATOR_BYTES;
    if raw.is_empty() {
        return Err("must not be empty".to_owned());
    }

    let hex_digits = ["\\x", "\\X", "0x", "0X"]
        .iter()
        .find_map(|prefix| raw.strip_prefix(prefix));
    if let Some(digits) = hex_digits {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "`{}` is not a hex form: after `{}` come only hex digits, as in `\\x01`",
                raw.escape_debug(),
                &raw[..2]
            ));
        }
        if digits.len() % 2 != 0 {
            return Err(format!(
                "`{raw}` has an odd number of hex digits: write two per byte, as in `\\x0D0A`"
            ));
        }
        if digits.len() / 2 > limit {
            return Err(format!(
                "`{raw}` is {} bytes: the cluster takes at most {limit}",
                digits.len() / 2
            ));
        }
        return Ok(raw.to_owned());
    }

    if raw.len() > limit {
        return Err(format!(
            "`{}` is {} bytes: the cluster takes at most {limit}",
            raw.escape_debug(),
            raw.len()
        ));
    }
    if raw.chars().any(char::is_control) {
        let hex: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
        return Ok(format!("\\x{hex}"));
    }
    Ok(raw.to_owned())
}

fn build_label_prefix(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    prefix: Option<String>,
) -> Option<String> {
    let prefix = prefix.unwrap_or_else(|| defaults::LABEL_PREFIX.to_owned());
    let max = label::max_prefix_len();
    let why = if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        format!(
            "`{}` may hold only ASCII letters, digits, `_` and `-`",
            prefix.escape_debug()
        )
    } else if prefix.len() > max {
        format!(
            "`{prefix}` is {} characters: at most {max} leave room for the digest",
            prefix.len()
        )
    } else {
        return Some(prefix);
    };
    checker.report(path, why);
    None
}

fn build_ignore(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    ignore: Option<Vec<String>>,
) -> Option<Vec<String>> {
    let Some(patterns) = ignore else {
        return Some(defaults::IGNORE.iter().map(|p| (*p).to_owned()).collect());
    };
    let mut ok = true;
    for (index, pattern) in patterns.iter().enumerate() {
        if let Err(err) = Glob::new(pattern) {
            checker.report(
                &path.index(index),
                format!("invalid glob `{pattern}`: {}", err.kind()),
            );
            ok = false;
        }
    }
    ok.then_some(patterns)
}

fn build_marker_suffix(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    suffix: Option<String>,
) -> Option<Option<String>> {
    let Some(suffix) = suffix else {
        return Some(None);
    };
    let why = if suffix.is_empty() {
        "must not be empty; leave the key out to load files without a marker"
    } else if suffix.contains('/') || suffix.chars().any(char::is_control) {
        "must be a plain file name ending such as `.ok`, without `/` or control characters"
    } else {
        return Some(Some(suffix));
    };
    checker.report(path, why);
    None
}

/// `[watch.headers]`: valid HTTP, and none of the headers sluice sets itself.
fn build_headers(
    checker: &mut Checker<'_>,
    watch_path: &KeyPath,
    headers: BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    let mut ok = true;
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (name, value) in &headers {
        let checked = ensure_header(watch_path, name, value).and_then(|()| {
            match seen.insert(name.to_ascii_lowercase(), name) {
                Some(first) => Err(format!(
                    "`{name}` repeats `{first}`: header names ignore case"
                )),
                None => Ok(()),
            }
        });
        if let Err(why) = checked {
            checker.report(&watch_path.key("headers").key(name), why);
            ok = false;
        }
    }
    ok.then_some(headers)
}

fn ensure_header(watch_path: &KeyPath, name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "`{name}` is set by sluice itself and cannot be configured"
        ));
    }
    if lower == "column_separator" {
        return Err(format!(
            "set the separator with `{}` instead of a header",
            watch_path.key("column_separator")
        ));
    }
    if HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "`{}` is not a valid header name",
            name.escape_debug()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "the value of `{name}` holds a control character; write separators in the cluster's \
             hex form such as `\\x0a`"
        ));
    }
    // Bytes above 0x7f pass: HTTP carries them, and `columns` or `where` may name non-ASCII
    // columns.
    if HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(format!("the value of `{name}` is not a valid header value"));
    }
    Ok(())
}

/// A folder that is a rename away from `dir` must live on its filesystem: the folder itself
/// when it exists, else its nearest existing ancestor, is compared by device.
fn ensure_same_filesystem(dir: &Path, folder: &Path) -> Result<(), String> {
    let mut existing = folder;
    let metadata = loop {
        match std::fs::metadata(existing) {
            Ok(metadata) => break metadata,
            Err(_) => match existing.parent() {
                Some(parent) => existing = parent,
                None => return Err(format!("no part of `{}` exists", folder.display())),
            },
        }
    };
    if existing == folder && !metadata.is_dir() {
        return Err(format!(
            "`{}` exists and is not a directory",
            folder.display()
        ));
    }
    let dir_metadata = std::fs::metadata(dir)
        .map_err(|err| format!("cannot inspect `{}`: {}", dir.display(), err.kind()))?;
    if device(&dir_metadata) != device(&metadata) {
        return Err(format!(
            "`{}` is on another filesystem than `{}`: files move there by rename, which cannot \
             cross filesystems",
            folder.display(),
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(unix)]
fn device(metadata: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::dev(metadata)
}

#[cfg(not(unix))]
fn device(_metadata: &std::fs::Metadata) -> u64 {
    0
}

/// The work folder must be its own: sharing it with the landing, done or failed folder would
/// make claimed files look new, or done files look claimed.
fn ensure_distinct_folders(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    dir: &Path,
    [done_dir, failed_dir, work_dir]: [&PathBuf; 3],
) {
    for (key, folder) in [
        ("done_dir", done_dir),
        ("failed_dir", failed_dir),
        ("work_dir", work_dir),
    ] {
        if folder == dir {
            checker.report(
                &path.key(key),
                format!("`{}` is the watched directory itself", folder.display()),
            );
        }
    }
    if work_dir == done_dir || work_dir == failed_dir {
        checker.report(
            &path.key("work_dir"),
            format!("`{}` is also the done or failed folder", work_dir.display()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_separators_are_kept_and_checked() {
        assert_eq!(normalize_column_separator("\\x01").unwrap(), "\\x01");
        assert_eq!(normalize_column_separator("0x0D0A").unwrap(), "0x0D0A");
        assert!(
            normalize_column_separator("\\x1")
                .unwrap_err()
                .contains("odd number")
        );
        assert!(
            normalize_column_separator("0xZZ")
                .unwrap_err()
                .contains("hex")
        );
        assert!(normalize_column_separator("\\x").is_err());
        let fifty = format!("\\x{}", "01".repeat(50));
        assert!(normalize_column_separator(&fifty).is_ok());
        let fifty_one = format!("\\x{}", "01".repeat(51));
        assert!(
            normalize_column_separator(&fifty_one)
                .unwrap_err()
                .contains("at most 50")
        );
    }

    #[test]
    fn plain_separators_are_kept_and_control_characters_become_hex() {
        assert_eq!(normalize_column_separator(",").unwrap(), ",");
        assert_eq!(normalize_column_separator("||").unwrap(), "||");
        assert_eq!(normalize_column_separator("\t").unwrap(), "\\x09");
        assert_eq!(normalize_column_separator("\u{1}").unwrap(), "\\x01");
        assert_eq!(
            normalize_column_separator(&"|".repeat(50)).unwrap().len(),
            50
        );
        assert!(normalize_column_separator(&"|".repeat(51)).is_err());
        assert!(normalize_column_separator("").is_err());
    }

    #[test]
    fn folders_on_the_same_filesystem_pass_even_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_same_filesystem(dir.path(), &dir.path().join("done/deeper")).is_ok());
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let err = ensure_same_filesystem(dir.path(), &dir.path().join("file")).unwrap_err();
        assert!(err.contains("not a directory"), "{err}");
    }
}
