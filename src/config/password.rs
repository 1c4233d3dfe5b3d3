//! The password of `cluster.user`, from exactly one of three sources.
//!
//! `password_file` is a file of our own and must be private to its owner; `password_env` names
//! an environment variable; `password_credential` names a systemd credential
//! (`LoadCredential=name:/path`), read from `$CREDENTIALS_DIRECTORY/name`. Messages name the
//! source, never the value.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::config::Secret;
use crate::config::document::KeyPath;
use crate::config::error::describe_io;
use crate::config::file::ClusterFile;
use crate::config::validate::Checker;

/// The environment variable systemd sets for a service with credentials.
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Reads the password from the one source `cluster` names; reports every problem on
/// `checker` and returns an empty secret then.
pub(super) fn resolve_password(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    cluster: &ClusterFile,
    env: &dyn Fn(&str) -> Option<String>,
) -> Secret {
    let sources: Vec<&str> = [
        ("password_credential", cluster.password_credential.is_some()),
        ("password_env", cluster.password_env.is_some()),
        ("password_file", cluster.password_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();

    match sources.as_slice() {
        [] => {
            let refused = ["password_credential", "password_env", "password_file"]
                .iter()
                .any(|key| checker.is_refused(&path.key(key)));
            if !refused {
                checker.report(
                    path,
                    "no password source: set one of `password_file`, `password_env` or \
                     `password_credential`",
                );
            }
            return Secret::default();
        }
        [_] => {}
        [first, rest @ ..] => {
            for key in rest {
                checker.report(
                    &path.key(key),
                    format!("`{first}` and `{key}` are both set: keep exactly one password source"),
                );
            }
            return Secret::default();
        }
    }

    let (key, result) = if let Some(file) = &cluster.password_file {
        let key = path.key("password_file");
        let Some(file) = checker.resolve_path(&key, file) else {
            return Secret::default();
        };
        let result = read_password_file(&file);
        (key, result)
    } else if let Some(name) = &cluster.password_env {
        (path.key("password_env"), read_password_env(name, env))
    } else if let Some(name) = &cluster.password_credential {
        (path.key("password_credential"), read_credential(name, env))
    } else {
        return Secret::default();
    };

    result.unwrap_or_else(|why| {
        checker.report(&key, why);
        Secret::default()
    })
}

fn read_password_env(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
    if name.is_empty() {
        return Err("the variable name is empty".to_owned());
    }
    match env(name) {
        Some(value) => Ok(Secret::new(value)),
        None => Err(format!("environment variable `{name}` is not set")),
    }
}

fn read_credential(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "`{name}` is not a credential name: give the name of `LoadCredential=name:...`"
        ));
    }
    let Some(dir) = env(CREDENTIALS_DIRECTORY) else {
        return Err(format!(
            "credential `{name}` needs `${CREDENTIALS_DIRECTORY}`, which systemd sets for a \
             service with `LoadCredential={name}:...`, but it is not set"
        ));
    };
    let file = Path::new(&dir).join(name);
    // systemd makes the credential readable by the service alone; no mode check is needed.
    read_secret(&file).map_err(|why| format!("cannot read credential `{}`: {why}", file.display()))
}

fn read_password_file(file: &Path) -> Result<Secret, String> {
    let shown = file.display();
    let mut handle =
        File::open(file).map_err(|err| format!("cannot open `{shown}`: {}", describe_io(&err)))?;
    let metadata = handle
        .metadata()
        .map_err(|err| format!("cannot read `{shown}`: {}", describe_io(&err)))?;
    if !metadata.is_file() {
        return Err(format!("`{shown}` is not a regular file"));
    }
    ensure_private("password file", file, &metadata)?;

    let mut bytes = Vec::new();
    handle
        .read_to_end(&mut bytes)
        .map_err(|err| format!("cannot read `{shown}`: {}", describe_io(&err)))?;
    decode_secret(bytes).map_err(|why| format!("`{shown}` {why}"))
}

fn read_secret(file: &Path) -> Result<Secret, String> {
    let bytes = std::fs::read(file).map_err(|err| describe_io(&err))?;
    decode_secret(bytes)
}

/// The content as a secret, one trailing newline (`\n` or `\r\n`) stripped, because editors and
/// `echo` add one that is not part of the password.
fn decode_secret(mut bytes: Vec<u8>) -> Result<Secret, String> {
    if bytes.ends_with(b"\r\n") {
        bytes.truncate(bytes.len() - 2);
    } else if bytes.ends_with(b"\n") {
        bytes.truncate(bytes.len() - 1);
    }
    // The error of from_utf8 would carry the bytes; it is dropped unseen.
    String::from_utf8(bytes)
        .map(Secret::new)
        .map_err(|_| "is not valid utf-8".to_owned())
}

/// Refuses a secret file (the password file, the client key) that group or others can read.
#[cfg(unix)]
pub(super) fn ensure_private(
    what: &str,
    file: &Path,
    metadata: &std::fs::Metadata,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;

    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(format!(
            "{what} `{}` is readable by group or others (mode {mode:03o}): run `chmod 600 {}`",
            file.display(),
            file.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
pub(super) fn ensure_private(
    _what: &str,
    _file: &Path,
    _metadata: &std::fs::Metadata,
) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_stripped() {
        assert_eq!(decode_secret(b"pw\n".to_vec()).unwrap().expose(), "pw");
        assert_eq!(decode_secret(b"pw\r\n".to_vec()).unwrap().expose(), "pw");
        assert_eq!(decode_secret(b"pw\n\n".to_vec()).unwrap().expose(), "pw\n");
        assert_eq!(decode_secret(b"pw".to_vec()).unwrap().expose(), "pw");
    }

    #[test]
    fn invalid_utf8_is_refused_without_the_bytes() {
        let err = decode_secret(vec![b's', 0xff, b'x']).unwrap_err();
        assert_eq!(err, "is not valid utf-8");
    }

    #[test]
    fn credential_names_cannot_leave_the_directory() {
        let env = |_: &str| Some("/run/credentials/sluice.service".to_owned());
        for bad in ["", ".", "..", "../etc/shadow", "a/b"] {
            assert!(read_credential(bad, &env).is_err(), "{bad}");
        }
    }
}
