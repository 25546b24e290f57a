//! The server-side request forgery guard of webhook delivery: which addresses a delivery may
//! connect to, checked on the addresses DNS returned (a resolver that drops refused ones), and
//! on a URL's literal IP (which never reaches a resolver). A host name that resolves to a
//! private address is refused as surely as the address itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why an address is refused, or `None` when a delivery may connect to it.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || a == 0 {
        Some("not a unicast address")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unique_local() {
        Some("private")
    } else if ip.is_unicast_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || ip.is_multicast() {
        Some("not a unicast address")
    } else {
        None
    }
}

/// The error a delivery fails with when every address of its host was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "{host} resolves only to refused addresses ({why}); set [webhooks] allow_private_addresses = true to deliver to private, loopback or link-local addresses"
)]
pub struct AddressRefused {
    pub host: String,
    pub why: String,
}

/// A DNS resolver for the delivery client that keeps only the addresses [`refused`] lets
/// through (so the connection is made to an address that was checked).
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(allowed_addresses(name.as_str().to_string()))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `host`'s addresses that [`refused`] lets through; an [`AddressRefused`] error when none.
async fn allowed_addresses(host: String) -> Result<reqwest::dns::Addrs, BoxError> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
    let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) =
        all.into_iter().partition(|a| refused(a.ip()).is_none());
    if allowed.is_empty() {
        let why = denied
            .iter()
            .map(|a| format!("{} is {}", a.ip(), refused(a.ip()).unwrap_or("refused")))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Box::new(AddressRefused { host, why }));
    }
    Ok(Box::new(allowed.into_iter()))
}

/// What every [`AddressRefused`] message says, for finding it in an error chain whose
/// wrappers (an `io::Error`) hide its type but show its text.
const REFUSED_MARK: &str = "resolves only to refused addresses";

/// Whether `e` (a delivery's error, through its sources) is a refusal of the guard.
pub fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<AddressRefused>().is_some() || c.to_string().contains(REFUSED_MARK) {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_and_link_local_are_refused_public_are_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(refused(ip).is_some(), "{ip} must be refused");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(refused(ip), None, "{ip} must be allowed");
        }
    }

    #[test]
    fn a_refusal_is_recognised_through_wrappers_that_hide_its_type() {
        let refused = AddressRefused {
            host: "metadata.internal".into(),
            why: "169.254.169.254 is link-local".into(),
        };
        let wrapped = std::io::Error::other(refused);
        assert!(is_refusal(&wrapped));
        assert!(!is_refusal(&std::io::Error::other("connection refused")));
    }
}
