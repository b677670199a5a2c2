//! Which `Host` names the API answers to: the guard against DNS rebinding.
//!
//! Without tokens the daemon trusts whoever reaches its loopback address.
//! A web page in a browser on the same machine can reach it too, once its
//! own name is made to resolve to 127.0.0.1: the browser then treats the
//! daemon as that page's origin. Such a request still names the page's host
//! in `Host`, so a daemon that answers only to the names it is really
//! reached by (loopback names and addresses, the address the connection
//! came in on, the public URL's host, and `http.allowed_hosts`) is out of
//! the attack's reach. With tokens every request carries its own proof, and
//! the check applies only when `http.allowed_hosts` is set.

use std::net::IpAddr;

/// The names the API answers to, or `None` when it answers to any.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    /// Lower case, without a trailing dot. A name that starts with a dot
    /// (`.example.com`) allows that domain and every name under it.
    names: Option<Vec<String>>,
}

impl AllowedHosts {
    /// The guard for a daemon with (or without) tokens, its configured
    /// `http.allowed_hosts` and `http.public_url`.
    pub fn new(has_tokens: bool, allowed_hosts: &[String], public_url: Option<&str>) -> Self {
        if has_tokens && allowed_hosts.is_empty() {
            return AllowedHosts { names: None };
        }
        let mut names: Vec<String> = allowed_hosts.iter().map(|name| normalize(name)).collect();
        if let Some(host) = public_url.and_then(url_host) {
            names.push(host);
        }
        AllowedHosts { names: Some(names) }
    }

    /// Whether a request that names `host` (its `Host` header, or the
    /// authority of an absolute request target), reached on the local
    /// address `local`, is served.
    pub fn allows(&self, host: Option<&str>, local: Option<IpAddr>) -> bool {
        let Some(names) = &self.names else {
            return true;
        };
        let Some(host) = host.and_then(host_of_authority) else {
            return false;
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            // An address is never a rebound name: a browser that sends it
            // connected to that address itself. The unspecified address
            // (0.0.0.0, [::]) reaches this machine as loopback does.
            return ip.is_loopback() || ip.is_unspecified() || Some(ip) == local;
        }
        host == "localhost"
            || names.iter().any(|name| match name.strip_prefix('.') {
                Some(domain) => {
                    host == domain
                        || host
                            .strip_suffix(domain)
                            .is_some_and(|sub| sub.ends_with('.'))
                }
                None => host == *name,
            })
    }
}

/// The host of an authority (`name`, `name:port`, `1.2.3.4:80`,
/// `[::1]:8080`), lower case, without a trailing dot and without the
/// brackets of an IPv6 address; `None` when it is not one.
fn host_of_authority(authority: &str) -> Option<String> {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    Some(normalize(host))
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|byte| byte.is_ascii_digit())
}

fn normalize(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.strip_suffix('.') {
        Some(bare) if !bare.is_empty() => bare.to_owned(),
        _ => name,
    }
}

/// The host of an `http://` or `https://` URL.
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    host_of_authority(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(allowed: &[&str], public_url: Option<&str>) -> AllowedHosts {
        let allowed: Vec<String> = allowed.iter().map(|name| (*name).to_owned()).collect();
        AllowedHosts::new(false, &allowed, public_url)
    }

    #[test]
    fn loopback_names_and_addresses_are_served_with_any_port() {
        let guard = guard(&[], None);
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:1",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:8080",
            "0.0.0.0:8080",
            "[::]:8080",
        ] {
            assert!(guard.allows(Some(host), None), "{host}");
        }
    }

    #[test]
    fn other_names_and_addresses_are_refused() {
        let guard = guard(&[], None);
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "evillocalhost",
            "10.0.0.5:8080",
            "[::2]:80",
            "",
            "localhost:http",
            "[::1",
            "user@localhost",
        ] {
            assert!(!guard.allows(Some(host), None), "{host}");
        }
        assert!(!guard.allows(None, None), "no host at all");
    }

    #[test]
    fn the_address_the_connection_came_in_on_is_served() {
        let guard = guard(&[], None);
        let local: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(guard.allows(Some("10.1.2.3:8080"), Some(local)));
        assert!(!guard.allows(Some("10.1.2.4:8080"), Some(local)));
    }

    #[test]
    fn listed_names_and_the_public_urls_host_are_served() {
        let guard = guard(
            &["Dashboard.Internal", ".corp.example"],
            Some("https://pm.example.com:8443/base"),
        );
        for host in [
            "dashboard.internal:8080",
            "corp.example",
            "a.corp.example",
            "b.a.corp.example:1",
            "pm.example.com",
        ] {
            assert!(guard.allows(Some(host), None), "{host}");
        }
        for host in ["xcorp.example", "dashboard.internal.evil", "example.com"] {
            assert!(!guard.allows(Some(host), None), "{host}");
        }
    }

    #[test]
    fn with_tokens_any_host_is_served_unless_a_list_is_set() {
        let open = AllowedHosts::new(true, &[], Some("https://pm.example.com"));
        assert!(open.allows(Some("evil.example"), None));
        let listed = AllowedHosts::new(true, &["pm.internal".into()], None);
        assert!(listed.allows(Some("pm.internal"), None));
        assert!(listed.allows(Some("localhost"), None));
        assert!(!listed.allows(Some("evil.example"), None));
    }
}
