//! The systemd notify protocol: `READY=1`, `STATUS=...`, `STOPPING=1` and `WATCHDOG=1` as
//! datagrams to `$NOTIFY_SOCKET`.
//!
//! The protocol is one datagram of newline-separated `KEY=VALUE` lines to a Unix socket named by
//! the environment: a path, or an abstract name written `@name`. It is a few lines over
//! `UnixDatagram`, so no crate is needed. Outside systemd (`NOTIFY_SOCKET` unset) every call
//! does nothing, so callers never check.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

use tracing::debug;

/// A handle on the service manager's notification socket, or on nothing.
#[derive(Debug)]
pub struct Notifier {
    /// The unbound socket we send from and the manager's address; `None` outside systemd.
    target: Option<(UnixDatagram, SocketAddr)>,
    /// `$WATCHDOG_USEC` when it is meant for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the process environment.
    ///
    /// An unusable `NOTIFY_SOCKET` (empty, bad name, socket cannot be made) is logged at debug
    /// and turns the notifier into a no-op: a service that cannot notify still loads files, and
    /// systemd then says why it gave up waiting.
    pub fn from_env() -> Notifier {
        Notifier::from_vars(&|name| std::env::var(name).ok(), std::process::id())
    }

    /// Like [`Notifier::from_env`], with the variables looked up by `var` and `pid` as our id.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>, pid: u32) -> Notifier {
        let target = var("NOTIFY_SOCKET").and_then(|name| match open(&name) {
            Ok(target) => Some(target),
            Err(err) => {
                debug!(socket = %name, error = %err, "cannot use NOTIFY_SOCKET");
                None
            }
        });
        Notifier {
            target,
            watchdog: watchdog_interval(var, pid),
        }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd set (`WatchdogSec=`), when it applies to this process.
    /// Pings should come at about half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Start-up is finished: `READY=1`, with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A free-form status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// Shutdown has begun; `extend` asks systemd to wait at least that long from now, so that a
    /// `shutdown_grace` longer than `TimeoutStopSec=` is still honoured.
    pub fn stopping(&self, status: &str, extend: Option<Duration>) {
        let mut message = format!("STOPPING=1\nSTATUS={}", one_line(status));
        if let Some(extend) = extend {
            message.push_str(&format!("\nEXTEND_TIMEOUT_USEC={}", extend.as_micros()));
        }
        self.send(&message);
    }

    /// The service is alive: `WATCHDOG=1`.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    /// Sends one datagram. Failures are logged at debug and otherwise ignored: notifications are
    /// advice to the manager, never a reason to stop loading.
    fn send(&self, message: &str) {
        let Some((socket, address)) = &self.target else {
            return;
        };
        if let Err(err) = socket.send_to_addr(message.as_bytes(), address) {
            debug!(error = %err, "cannot notify the service manager");
        }
    }
}

/// The unbound sending socket and the address for a `NOTIFY_SOCKET` value.
fn open(name: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let address = match name.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes())?,
        None if name.starts_with('/') => SocketAddr::from_pathname(Path::new(name))?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract name (`@...`)",
            ));
        }
    };
    Ok((UnixDatagram::unbound()?, address))
}

/// `WATCHDOG_USEC` when `WATCHDOG_PID` is unset or names this process (the variables are
/// inherited by children, which must not ping for us).
fn watchdog_interval(var: &dyn Fn(&str) -> Option<String>, pid: u32) -> Option<Duration> {
    if let Some(owner) = var("WATCHDOG_PID")
        && owner.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    let usec: u64 = var("WATCHDOG_USEC")?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A status must be one line: a newline would start a new `KEY=VALUE` pair.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_ready_status_and_stopping_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::from_vars(&vars(&[("NOTIFY_SOCKET", path.to_str().unwrap())]), 1);
        assert!(notifier.is_enabled());

        notifier.ready("watching 2 folders");
        notifier.status("loading 1\nsecond line");
        notifier.stopping("stopping", Some(Duration::from_secs(40)));
        notifier.watchdog_ping();

        assert_eq!(receive(&listener), "READY=1\nSTATUS=watching 2 folders");
        assert_eq!(receive(&listener), "STATUS=loading 1 second line");
        assert_eq!(
            receive(&listener),
            "STOPPING=1\nSTATUS=stopping\nEXTEND_TIMEOUT_USEC=40000000"
        );
        assert_eq!(receive(&listener), "WATCHDOG=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("sluice-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::from_vars(&vars(&[("NOTIFY_SOCKET", &format!("@{name}"))]), 1);

        notifier.ready("up");

        assert_eq!(receive(&listener), "READY=1\nSTATUS=up");
    }

    #[test]
    fn does_nothing_without_a_socket_or_with_a_bad_one() {
        assert!(!Notifier::from_vars(&vars(&[]), 1).is_enabled());
        let relative = Notifier::from_vars(&vars(&[("NOTIFY_SOCKET", "relative/path")]), 1);
        assert!(!relative.is_enabled());
        relative.ready("nobody listens");
    }

    #[test]
    fn the_watchdog_applies_only_to_its_own_process() {
        let ours = vars(&[("WATCHDOG_USEC", "3000000"), ("WATCHDOG_PID", "42")]);
        assert_eq!(
            Notifier::from_vars(&ours, 42).watchdog(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(Notifier::from_vars(&ours, 43).watchdog(), None);
        let no_pid = vars(&[("WATCHDOG_USEC", "500000")]);
        assert_eq!(
            Notifier::from_vars(&no_pid, 7).watchdog(),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            Notifier::from_vars(&vars(&[("WATCHDOG_USEC", "0")]), 7).watchdog(),
            None
        );
    }
}
