//! The error of a config file: every problem found in it, each with its line and key.
//!
//! Validation does not stop at the first problem, so an operator fixes the file in one round.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// All problems of one config file.
///
/// `Display` prints one problem per line as `<file>:<line>: <key>: <what is wrong>`, leaving out
/// the line when the problem has none (a missing section) and the key when it concerns the
/// whole file (unreadable, TOML syntax).
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file as the caller named it, for messages.
    pub origin: PathBuf,
    /// In file order; problems without a line come last.
    pub problems: Vec<Problem>,
}

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key (or of the enclosing table when the key is missing).
    pub line: Option<usize>,
    /// Path of the key, e.g. `watch[2].column_separator` or `cluster.endpoint`; empty for
    /// problems of the whole file.
    pub key: String,
    /// What is wrong, lowercase, names in backticks. Never holds a secret.
    pub message: String,
}

impl ConfigError {
    /// An error with one problem that concerns the whole file.
    pub(super) fn single(origin: &Path, message: String) -> ConfigError {
        ConfigError {
            origin: origin.to_path_buf(),
            problems: vec![Problem {
                line: None,
                key: String::new(),
                message,
            }],
        }
    }

    /// Puts problems in file order, keeping the order of discovery within one line.
    pub(super) fn new(origin: &Path, mut problems: Vec<Problem>) -> ConfigError {
        problems.sort_by_key(|problem| (problem.line.is_none(), problem.line));
        ConfigError {
            origin: origin.to_path_buf(),
            problems,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.origin.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            f.write_str(": ")?;
            if !problem.key.is_empty() {
                write!(f, "{}: ", problem.key)?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// An I/O error in our message style: lowercase, without the `(os error N)` tail.
pub(super) fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        io::ErrorKind::InvalidData => "not valid utf-8".to_owned(),
        _ => {
            let text = err.to_string();
            let text = match text.find(" (os error") {
                Some(end) => text[..end].to_owned(),
                None => text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_prints_one_problem_per_line_in_file_order() {
        let error = ConfigError::new(
            Path::new("/etc/sluice/sluice.toml"),
            vec![
                Problem {
                    line: None,
                    key: "watch".into(),
                    message: "at least one `[[watch]]` is needed".into(),
                },
                Problem {
                    line: Some(7),
                    key: "cluster.endpoint".into(),
                    message: "bad".into(),
                },
                Problem {
                    line: Some(2),
                    key: String::new(),
                    message: "syntax".into(),
                },
            ],
        );
        assert_eq!(
            error.to_string(),
            "/etc/sluice/sluice.toml:2: syntax\n\
             /etc/sluice/sluice.toml:7: cluster.endpoint: bad\n\
             /etc/sluice/sluice.toml: watch: at least one `[[watch]]` is needed"
        );
    }

    #[test]
    fn io_errors_are_lowercase_without_os_error_numbers() {
        let err = io::Error::from_raw_os_error(36);
        let text = describe_io(&err);
        assert!(!text.contains("os error"), "{text}");
        assert_eq!(text, text.to_lowercase());
        assert_eq!(
            describe_io(&io::Error::from(io::ErrorKind::NotFound)),
            "no such file or directory"
        );
    }
}
