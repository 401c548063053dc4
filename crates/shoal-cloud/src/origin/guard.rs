//! The SSRF guard: a storage node fetches URLs that users give it, so a URL must not reach the
//! node's own loopback, its private network or the cloud's metadata service (169.254.169.254)
//! unless the operator allowed it.
//!
//! Two checks cover both ways an address reaches the connector:
//! - [`Resolver`] is the client's only DNS resolver: it refuses a name if any of its addresses
//!   is private, and hands the connector exactly the addresses it checked, so a second lookup
//!   (DNS rebinding) cannot swap in another address between the check and the connect.
//! - [`check_url`] checks IP-literal hosts, which reqwest connects to without asking the
//!   resolver; it runs on the first URL and on every redirect hop.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use super::OriginError;

/// Whether connecting to `ip` could reach the node itself or a network behind it: loopback,
/// private, shared (CGNAT), link-local, unique-local, unspecified, multicast, broadcast and
/// reserved ranges, and IPv6 forms that embed such an IPv4 address.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => is_private_v6(v6),
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    // 0/8 ("this network"): Linux connects 0.0.0.0 to the local host.
    a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        // 224/4 multicast, then 240/4 reserved, which ends with the broadcast address.
        || a >= 224
}

fn is_private_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_private_v4(v4);
    }
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // site-local fec0::/10, deprecated but still routed locally
        || (first & 0xfe00) == 0xfc00 // unique-local fc00::/7
        || (first & 0xff00) == 0xff00 // multicast ff00::/8
}

/// The IPv4 address inside an IPv6 address that a host or gateway translates back to IPv4:
/// mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d` (deprecated) and NAT64 `64:ff9b::a.b.c.d`.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let [.., a, b, c, d] = ip.octets();
    match s[..6] {
        [0, 0, 0, 0, 0, 0xffff] | [0, 0, 0, 0, 0, 0] | [0x64, 0xff9b, 0, 0, 0, 0] => {
            Some(Ipv4Addr::new(a, b, c, d))
        }
        _ => None,
    }
}

/// The first private address among those `host` resolved to, as an error; `Ok` if none is
/// private or the operator allowed private targets. One bad address refuses the whole name:
/// the connector may try any of them.
pub(crate) fn check_addrs(
    host: &str,
    addrs: &[SocketAddr],
    allow_private: bool,
) -> Result<(), Refusal> {
    match addrs.iter().find(|a| !allow_private && is_private(a.ip())) {
        Some(a) => Err(Refusal { host: host.to_owned(), addr: a.ip() }),
        None => Ok(()),
    }
}

/// Checks a URL before any request is sent to it: the first URL and every redirect target.
/// Only http and https are fetched; an IP-literal host must not be private. Names are
/// checked later, by the [`Resolver`], when the connector asks for their addresses.
pub(crate) fn check_url(url: &Url, allow_private: bool) -> Result<(), OriginError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OriginError::BadUrl {
            url: url.to_string(),
            why: format!("the scheme {:?} is not http or https", url.scheme()),
        });
    }
    let addr = match url.host() {
        None => {
            return Err(OriginError::BadUrl { url: url.to_string(), why: "no host".into() });
        }
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if !allow_private && is_private(addr) {
        let host = url.host_str().unwrap_or_default().to_owned();
        return Err(OriginError::Refused { host, addr });
    }
    Ok(())
}

/// A name refused by the [`Resolver`]. It travels inside reqwest's connect error, where
/// [`super::error`] finds it again to report [`OriginError::Refused`] and not retry.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) host: String,
    pub(crate) addr: IpAddr,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves to the private address {}", self.host, self.addr)
    }
}

impl std::error::Error for Refusal {}

/// The client's DNS resolver: the system resolver (through tokio), then [`check_addrs`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolver {
    pub(crate) allow_private: bool,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: reqwest puts the URL's port in.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            check_addrs(host, &addrs, allow_private)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let table: &[(&str, bool)] = &[
            ("0.0.0.0", true),                // unspecified
            ("0.1.2.3", true),                // "this network", reaches the local host on Linux
            ("10.0.0.1", true),               // private 10/8
            ("10.255.255.255", true),         // private 10/8, last
            ("11.0.0.1", false),              // just past 10/8
            ("100.63.255.255", false),        // just below CGNAT
            ("100.64.0.1", true),             // CGNAT 100.64/10, first
            ("100.127.255.255", true),        // CGNAT, last
            ("100.128.0.0", false),           // just past CGNAT
            ("127.0.0.1", true),              // loopback
            ("127.255.0.9", true),            // loopback, anywhere in 127/8
            ("169.254.169.254", true),        // link-local: the cloud metadata service
            ("169.255.0.1", false),           // just past link-local
            ("172.15.255.255", false),        // just below 172.16/12
            ("172.16.0.1", true),             // private 172.16/12, first
            ("172.31.255.255", true),         // private 172.16/12, last
            ("172.32.0.0", false),            // just past 172.16/12
            ("192.168.1.1", true),            // private 192.168/16
            ("192.169.0.1", false),           // just past 192.168/16
            ("224.0.0.1", true),              // multicast
            ("239.255.255.250", true),        // multicast (SSDP)
            ("240.0.0.1", true),              // reserved 240/4
            ("255.255.255.255", true),        // broadcast
            ("1.1.1.1", false),               // public
            ("93.184.216.34", false),         // public
            ("223.255.255.255", false),       // public, last before multicast
            ("::", true),                     // unspecified
            ("::1", true),                    // loopback
            ("fe80::1", true),                // link-local
            ("febf:ffff::1", true),           // link-local fe80::/10, last block
            ("fec0::1", true),                // site-local (deprecated)
            ("fc00::1", true),                // unique-local fc00::/7, first half
            ("fd12:3456::1", true),           // unique-local, fd00::/8 half
            ("ff02::1", true),                // multicast
            ("::ffff:127.0.0.1", true),       // IPv4-mapped loopback
            ("::ffff:10.1.2.3", true),        // IPv4-mapped private
            ("::ffff:169.254.169.254", true), // IPv4-mapped metadata service
            ("::ffff:8.8.8.8", false),        // IPv4-mapped public
            ("::127.0.0.1", true),            // IPv4-compatible loopback
            ("64:ff9b::10.0.0.1", true),      // NAT64 of a private address
            ("64:ff9b::8.8.8.8", false),      // NAT64 of a public address
            ("2001:db8::1", false),           // documentation range: routed nowhere, not local
            ("2606:4700::1111", false),       // public
        ];
        for &(addr, private) in table {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(is_private(ip), private, "{addr}");
        }
    }

    #[test]
    fn one_private_address_refuses_the_name() {
        let public: SocketAddr = "93.184.216.34:0".parse().unwrap();
        let private: SocketAddr = "[fd00::1]:0".parse().unwrap();
        assert!(check_addrs("example.org", &[public], false).is_ok());
        let err = check_addrs("example.org", &[public, private], false).unwrap_err();
        assert_eq!(err.addr, private.ip());
        assert_eq!(err.host, "example.org");
        // The operator's choice wins.
        assert!(check_addrs("example.org", &[public, private], true).is_ok());
    }

    #[test]
    fn checks_each_hop() {
        let check = |url: &str, allow| check_url(&Url::parse(url).unwrap(), allow);
        // A redirect to a private literal, to the metadata service or to a mapped loopback.
        for url in [
            "http://10.0.0.1/x",
            "http://169.254.169.254/latest/meta-data/",
            "https://[::ffff:127.0.0.1]:8443/",
            "http://[::1]/",
            "http://0x7f.1/", // the URL parser reads this as 127.0.0.1
        ] {
            match check(url, false) {
                Err(OriginError::Refused { addr, .. }) => assert!(is_private(addr), "{url}"),
                other => panic!("{url}: {other:?}"),
            }
            assert!(check(url, true).is_ok(), "{url} with private targets allowed");
        }
        // Public literals and names pass (names are checked when resolved).
        assert!(check("http://93.184.216.34/file", false).is_ok());
        assert!(check("https://example.org/file", false).is_ok());
        assert!(check("http://localhost/file", false).is_ok());
        // Other schemes never, whatever the operator allows.
        for url in ["file:///etc/passwd", "ftp://example.org/x", "gopher://10.0.0.1/"] {
            assert!(matches!(check(url, true), Err(OriginError::BadUrl { .. })), "{url}");
        }
    }
}
