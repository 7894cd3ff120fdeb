//! Who is the client? The socket peer, unless that peer is a trusted reverse proxy, in which case
//! the address it reports in `X-Forwarded-For` (or `X-Real-IP`).
//!
//! Only addresses in `[server] trusted_proxies` are believed: anyone else could put any address in
//! those headers. Plain Rust, no actix.

use std::{fmt, net::IpAddr, str::FromStr};

/// An address block such as `10.0.0.0/8`, `::1/128` or a single address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// True if `ip` lies in this block (IPv4-mapped IPv6 addresses match IPv4 blocks).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a `trusted_proxies` entry does not parse.
#[derive(Debug, PartialEq, Eq)]
pub struct CidrError(String);

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an address or address/prefix", self.0)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = canonical(addr.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// The configured trusted proxies.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses every entry.
    ///
    /// # Errors
    /// The first entry that is not an address or a block.
    pub fn parse(entries: &[String]) -> Result<Self, CidrError> {
        entries.iter().map(|e| e.parse()).collect::<Result<_, _>>().map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client's address for a request from socket peer `peer` carrying these header values.
    ///
    /// From a trusted peer, `X-Forwarded-For` is read right to left, skipping trusted proxies; the
    /// first other address is the client. Without that header, `X-Real-IP` is used. From any other
    /// peer the headers are ignored.
    pub fn client_addr(&self, peer: IpAddr, forwarded_for: Option<&str>, real_ip: Option<&str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        if let Some(chain) = forwarded_for {
            let mut last = None;
            for hop in chain.rsplit(',').map(str::trim) {
                let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else { return last.unwrap_or(peer) };
                if !self.trusts(ip) {
                    return ip;
                }
                last = Some(ip);
            }
            return last.unwrap_or(peer);
        }
        real_ip.and_then(|ip| ip.trim().parse().ok()).map(canonical).unwrap_or(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.200.3.4")) && !net.contains(ip("11.0.0.1")));
        assert!(net.contains(ip("::ffff:10.1.1.1")), "IPv4-mapped IPv6");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_are_believed_only_from_trusted_peers() {
        let proxies = TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        // Untrusted peer: headers ignored.
        assert_eq!(proxies.client_addr(ip("203.0.113.9"), Some("1.2.3.4"), Some("5.6.7.8")), ip("203.0.113.9"));
        // Trusted peer: rightmost untrusted hop of X-Forwarded-For.
        assert_eq!(
            proxies.client_addr(ip("127.0.0.1"), Some("6.6.6.6, 198.51.100.7, 10.1.1.1"), None),
            ip("198.51.100.7")
        );
        // X-Real-IP when there is no X-Forwarded-For.
        assert_eq!(proxies.client_addr(ip("127.0.0.1"), None, Some("198.51.100.8")), ip("198.51.100.8"));
        // Garbage in the chain stops the walk at the last good hop.
        assert_eq!(proxies.client_addr(ip("127.0.0.1"), Some("junk, 10.0.0.5"), None), ip("10.0.0.5"));
        assert_eq!(proxies.client_addr(ip("127.0.0.1"), Some("junk"), None), ip("127.0.0.1"));
        // No headers: the proxy itself.
        assert_eq!(proxies.client_addr(ip("127.0.0.1"), None, None), ip("127.0.0.1"));
    }
}
