//! Where a redirect (or an advertised ErrorURL) sends us: resolution, the `redirect_map`, and
//! the refusal of plain http.
//!
//! The FE's Location is always `http://<BE host>:<port>` as the BE registered itself (STREAMLOAD
//! §2), often an address only reachable inside the cluster. The map rewrites such `host:port`
//! pairs to reachable ones; a mapped address takes the endpoint's scheme (it exists to point at
//! a TLS-terminating proxy) unless the map's value names a scheme itself.

use std::collections::BTreeMap;

use reqwest::Url;

use crate::config::Scheme;

/// How URLs named by the cluster are turned into URLs we may use.
#[derive(Debug, Clone)]
pub(crate) struct RedirectPolicy {
    pub(crate) allow_insecure_http: bool,
    /// Scheme of the configured endpoint: what a bare `host:port` map value is reached with.
    pub(crate) endpoint_scheme: Scheme,
    pub(crate) map: BTreeMap<String, String>,
}

/// Why a URL named by the cluster cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a usable http(s) URL; the text says why.
    Invalid(String),
    /// Would go from https to plain http, which was not allowed. Holds the URL refused.
    Insecure(String),
}

impl RedirectPolicy {
    /// The next URL after a redirect from `current` with `location`: resolved relative to
    /// `current`, mapped, and refused when it would downgrade https to http.
    pub(crate) fn follow(&self, current: &Url, location: &str) -> Result<Url, Refusal> {
        let resolved = current
            .join(location.trim())
            .map_err(|e| Refusal::Invalid(format!("bad Location `{location}`: {e}")))?;
        let next = self.rewrite(resolved)?;
        if current.scheme() == "https" && next.scheme() == "http" && !self.allow_insecure_http {
            return Err(Refusal::Insecure(next.to_string()));
        }
        Ok(next)
    }

    /// `url` with its `host:port` rewritten by the map, when the map names it.
    pub(crate) fn rewrite(&self, url: Url) -> Result<Url, Refusal> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::Invalid(format!("`{url}` is not an http(s) URL")));
        }
        let Some(host) = url.host_str().map(str::to_owned) else {
            return Err(Refusal::Invalid(format!("`{url}` names no host")));
        };
        let port = url.port_or_known_default().unwrap_or(80);
        let Some(target) = self.map.get(&format!("{host}:{port}")) else {
            return Ok(url);
        };

        let (scheme, authority) = match target.split_once("://") {
            Some((scheme, rest)) => (scheme.to_owned(), rest.trim_end_matches('/').to_owned()),
            None => (scheme_name(self.endpoint_scheme).to_owned(), target.clone()),
        };
        let mapped = Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| Refusal::Invalid(format!("bad redirect_map value `{target}`: {e}")))?;
        if !matches!(mapped.scheme(), "http" | "https") || mapped.host_str().is_none() {
            return Err(Refusal::Invalid(format!(
                "bad redirect_map value `{target}`"
            )));
        }

        // Built from parts rather than edited in place: the path and query stay, the
        // fragment (never sent anyway) goes.
        let mut out = mapped;
        out.set_path(url.path());
        out.set_query(url.query());
        tracing::debug!(from = %format!("{host}:{port}"), to = %target, "redirect_map applied");
        Ok(out)
    }
}

/// The URL scheme of a configured `Scheme`.
pub(crate) fn scheme_name(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    }
}

/// Whether `status` is a redirect we follow.
pub(crate) fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(insecure: bool, map: &[(&str, &str)]) -> RedirectPolicy {
        RedirectPolicy {
            allow_insecure_http: insecure,
            endpoint_scheme: Scheme::Https,
            map: map
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn refuses_https_to_http_unless_allowed() {
        let fe = url("https://fe.example.com:8443/api/db/t/_stream_load");
        let loc = "http://10.0.0.12:8040/api/db/t/_stream_load";
        assert_eq!(
            policy(false, &[]).follow(&fe, loc),
            Err(Refusal::Insecure(loc.to_owned()))
        );
        assert_eq!(policy(true, &[]).follow(&fe, loc).unwrap().as_str(), loc);
    }

    #[test]
    fn maps_advertised_addresses_to_the_endpoint_scheme() {
        let fe = url("https://fe.example.com:8443/api/db/t/_stream_load");
        let p = policy(false, &[("10.0.0.12:8040", "be1.example.com:9443")]);
        let next = p
            .follow(&fe, "http://10.0.0.12:8040/api/db/t/_stream_load?x=1")
            .unwrap();
        assert_eq!(
            next.as_str(),
            "https://be1.example.com:9443/api/db/t/_stream_load?x=1"
        );
    }

    #[test]
    fn a_map_value_may_name_its_scheme() {
        let fe = url("https://fe:8443/api/db/t/_stream_load");
        let p = policy(false, &[("be:8040", "http://be-plain:8040")]);
        assert!(matches!(
            p.follow(&fe, "http://be:8040/api/db/t/_stream_load"),
            Err(Refusal::Insecure(_))
        ));
        let p = policy(true, &[("be:8040", "http://be-plain:8040")]);
        let next = p
            .follow(&fe, "http://be:8040/api/db/t/_stream_load")
            .unwrap();
        assert_eq!(next.as_str(), "http://be-plain:8040/api/db/t/_stream_load");
    }

    #[test]
    fn keys_use_the_default_port_when_the_location_has_none() {
        let fe = url("https://fe/api/db/t/_stream_load");
        let p = policy(false, &[("be:80", "be-proxy:443")]);
        let next = p.follow(&fe, "http://be/api/db/t/_stream_load").unwrap();
        assert_eq!(next.as_str(), "https://be-proxy/api/db/t/_stream_load");
    }

    #[test]
    fn resolves_relative_locations() {
        let fe = url("https://fe:8443/api/db/t/_stream_load");
        let p = policy(false, &[]);
        assert_eq!(
            p.follow(&fe, "/api/db/t/_stream_load?again=1")
                .unwrap()
                .as_str(),
            "https://fe:8443/api/db/t/_stream_load?again=1"
        );
        assert_eq!(
            p.follow(&fe, "other").unwrap().as_str(),
            "https://fe:8443/api/db/t/other"
        );
    }

    #[test]
    fn refuses_other_schemes() {
        let fe = url("https://fe:8443/x");
        assert!(matches!(
            policy(true, &[]).follow(&fe, "ftp://be/x"),
            Err(Refusal::Invalid(_))
        ));
    }
}
