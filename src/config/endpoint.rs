//! `cluster.endpoint` and the `host:port` pairs of `cluster.redirect_map`.
//!
//! The endpoint is only ever a base: scheme, host and port. A path, query or fragment would be
//! silently dropped or mangled when the Stream Load path is appended, and userinfo would put the
//! password where logs and error messages show it, so all of them are refused.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{Endpoint, Scheme};

/// Longest DNS name, in bytes.
const MAX_HOST_LEN: usize = 253;

/// Parses an endpoint URL such as `https://fe.example.com:8443`.
///
/// # Errors
///
/// A message saying what is wrong. When the URL carries userinfo the message does not repeat
/// the URL, because the part before `@` may be a password.
pub(super) fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if text.contains('@') {
        return Err(
            "endpoint must not carry credentials (`user:password@`): set `cluster.user` \
                    and one password key instead"
                .to_owned(),
        );
    }

    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!(
            "endpoint `{text}` is not a URL: write it like `https://fe.example.com:8443`"
        ));
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => {
            return Err(format!(
                "endpoint `{text}` has scheme `{scheme}`: only `https` and `http` are supported"
            ));
        }
    };

    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.is_empty() && tail != "/" {
        return Err(format!(
            "endpoint `{text}` has a path, query or fragment: give only scheme, host and port, \
             sluice appends `/api/<database>/<table>/_stream_load` itself"
        ));
    }

    let (host, port) = parse_authority(authority, Some(scheme.default_port()))
        .map_err(|why| format!("endpoint `{text}`: {why}"))?;
    Ok(Endpoint { scheme, host, port })
}

/// Parses and normalizes a `host:port` of `cluster.redirect_map`: host in lowercase, IPv6 in
/// brackets.
///
/// # Errors
///
/// A message saying what is wrong; the port is required.
pub(super) fn normalize_host_port(text: &str) -> Result<String, String> {
    let (host, port) = parse_authority(text, None)?;
    Ok(format_authority(&host, port))
}

/// `host:port`, with an IPv6 host in brackets.
pub(super) fn format_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host[:port]` into a checked host (lowercase; IPv6 without brackets) and a port.
fn parse_authority(text: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!(
                "`{text}` opens `[` for an IPv6 address but never closes it"
            ));
        };
        let address: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("`{inside}` is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("unexpected `{after}` after `]` in `{text}`")),
            },
        };
        (address.to_string(), port)
    } else {
        let (host, port) = match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        ensure_host(host)?;
        (host.to_ascii_lowercase(), port)
    };

    let port = match (port, default_port) {
        (Some(port), _) => parse_port(port)?,
        (None, Some(port)) => port,
        (None, None) => return Err(format!("`{text}` needs a port, as in `host:8040`")),
    };
    Ok((host, port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("port `{text}` is not a number from 1 to 65535")),
    }
}

/// A DNS name or IPv4 address. Underscores are let through: container and compose service
/// names use them, and the name resolver, not the URL grammar, is the judge there.
fn ensure_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".to_owned());
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!("host `{host}` is longer than {MAX_HOST_LEN} bytes"));
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if labels_ok {
        Ok(())
    } else {
        Err(format!("`{host}` is not a valid host name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_the_scheme() {
        let https = parse_endpoint("https://FE.example.com").unwrap();
        assert_eq!(
            (https.scheme, https.host.as_str(), https.port),
            (Scheme::Https, "fe.example.com", 443)
        );
        let http = parse_endpoint("http://fe:8030/").unwrap();
        assert_eq!((http.scheme, http.port), (Scheme::Http, 8030));
        assert_eq!(parse_endpoint("http://fe").unwrap().port, 80);
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets_in_the_authority() {
        let endpoint = parse_endpoint("https://[::1]:8443").unwrap();
        assert_eq!(endpoint.host, "::1");
        assert_eq!(endpoint.authority(), "[::1]:8443");
        assert_eq!(endpoint.to_string(), "https://[::1]:8443");
    }

    #[test]
    fn refuses_paths_queries_and_other_schemes() {
        for bad in [
            "https://fe:8443/api",
            "https://fe:8443?x=1",
            "https://fe:8443#top",
            "ftp://fe",
            "fe.example.com:8443",
            "https://",
            "https://fe:0",
            "https://fe:99999",
            "https://fe:+80",
            "https://-fe-",
            "https://fe..x",
            "https://[::1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn userinfo_is_refused_without_echoing_it() {
        let err = parse_endpoint("https://loader:hunter2@fe:8443").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("credentials"), "{err}");
    }

    #[test]
    fn redirect_map_sides_need_a_port() {
        assert_eq!(
            normalize_host_port("BE-1.internal:8040").unwrap(),
            "be-1.internal:8040"
        );
        assert_eq!(
            normalize_host_port("[fd00::1]:8040").unwrap(),
            "[fd00::1]:8040"
        );
        assert_eq!(
            normalize_host_port("10.0.0.12:8040").unwrap(),
            "10.0.0.12:8040"
        );
        assert!(normalize_host_port("be1").is_err());
        assert!(normalize_host_port("be1:").is_err());
        assert!(normalize_host_port("be1:80:80").is_err());
    }
}
