//! Log setup for the binary: a `RUST_LOG`-style filter, text or JSON lines on stderr, and the
//! journal's conventions when stderr is connected to it.
//!
//! systemd sets `JOURNAL_STREAM=dev:ino` for a service whose stderr goes to the journal. Then
//! lines carry no timestamp (the journal adds its own) and no colours, and each starts with a
//! `<N>` syslog priority, which the journal strips and records as the entry's priority
//! (`SyslogLevelPrefix=`, on by default), so `journalctl -p warning` works.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogFormat;
use crate::progress::LogWriter;

/// Installs the global subscriber.
///
/// The filter is `RUST_LOG` when set and valid, else `level` (the `--log-level` flag, same
/// syntax: `info`, `sluice=debug,hyper=warn`), else `info`. Call once, before any logging.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal();
    let colours =
        !journal && std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if journal => builder
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .init(),
        LogFormat::Text => builder.with_ansi(colours).init(),
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` names. Comparing device and inode, as systemd
/// asks, keeps a child whose stderr was redirected (to a file, a pipe) from writing priority
/// prefixes into it just because it inherited the variable.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = parse_journal_stream(&value.to_string_lossy()) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|meta| meta.dev() == dev && meta.ino() == ino)
}

/// `dev:ino`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The syslog priority of a tracing level: err, warning, info, debug.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Puts `<N>` before each event formatted by the inner format.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn journal_lines_start_with_their_priority_and_carry_no_time() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(path = "/x", "cannot claim file");
            tracing::warn!("will retry");
            tracing::info!(label = "l", "loaded");
            tracing::debug!("skipped");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<3>ERROR "), "{text}");
        assert!(lines[0].contains("cannot claim file path=\"/x\""), "{text}");
        assert!(lines[1].starts_with("<4> WARN "), "{text}");
        assert!(lines[2].starts_with("<6> INFO "), "{text}");
        assert!(lines[3].starts_with("<7>DEBUG "), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }

    #[test]
    fn parses_journal_stream() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:x"), None);
        assert_eq!(parse_journal_stream(""), None);
    }
}
