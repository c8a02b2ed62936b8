//! The client's address: the TCP peer, or, when the peer is a trusted reverse proxy
//! (`TRUSTED_PROXIES`), the address that proxy recorded in `X-Forwarded-For`. Throttling
//! and the access log key on it, so it must not be something any client can write.

use std::net::IpAddr;

/// The proxies whose `X-Forwarded-For` is believed: addresses and CIDR ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Net>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl TrustedProxies {
    /// Parses a comma-separated list such as `127.0.0.1, 10.0.0.0/8, ::1`.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Net::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether no proxy is trusted (then `X-Forwarded-For` is never read).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a range covers every address (`0.0.0.0/0`, `::/0`): then any client that
    /// connects directly can name its own address.
    pub fn trusts_everyone(&self) -> bool {
        self.0.iter().any(|n| n.prefix == 0)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address. From an untrusted peer, the peer itself, whatever headers it
    /// sent. From a trusted proxy, the right-most `X-Forwarded-For` entry that is not
    /// itself a trusted proxy: entries to its left were written by the client and prove
    /// nothing. An entry that is not an address stops the walk at the last trusted hop.
    pub fn client_ip<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl Iterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.flat_map(|h| h.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>().map(canonical) {
                Ok(ip) if self.trusts(ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_ranges_and_refuses_junk() {
        let t = TrustedProxies::parse(" 127.0.0.1, 10.0.0.0/8 ,::1, fd00::/8 ").unwrap();
        assert_eq!(t.0.len(), 4);
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "nginx", "1.2.3.4/x", "::1/129", "1.2.3"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_match_by_prefix() {
        let t = TrustedProxies::parse("10.0.0.0/8, fd00::/8, 192.168.1.7").unwrap();
        assert!(t.trusts(ip("10.255.0.1")));
        assert!(!t.trusts(ip("11.0.0.1")));
        assert!(t.trusts(ip("fd12::1")));
        assert!(!t.trusts(ip("fe80::1")));
        assert!(t.trusts(ip("192.168.1.7")));
        assert!(!t.trusts(ip("192.168.1.8")));
        assert!(t.trusts(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .trusts(ip("8.8.8.8"))
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse("127.0.0.1").unwrap();
        let peer = ip("203.0.113.9");
        assert_eq!(t.client_ip(peer, ["1.2.3.4"].into_iter()), peer);
        assert_eq!(
            TrustedProxies::default().client_ip(peer, ["1.2.3.4"].into_iter()),
            peer
        );
    }

    #[test]
    fn a_trusted_proxy_hands_over_the_rightmost_untrusted_hop() {
        let t = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let proxy = ip("127.0.0.1");
        let c = |h: &[&str]| t.client_ip(proxy, h.iter().copied());
        assert_eq!(c(&["198.51.100.7"]), ip("198.51.100.7"));
        // a client that writes its own X-Forwarded-For cannot pick its address
        assert_eq!(c(&["6.6.6.6, 198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(
            c(&["6.6.6.6", "198.51.100.7, 10.1.1.1"]),
            ip("198.51.100.7")
        );
        assert_eq!(c(&[]), proxy);
        assert_eq!(c(&["10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(c(&["junk, 10.0.0.2"]), ip("10.0.0.2"));
        assert_eq!(c(&[" 2001:db8::1 "]), ip("2001:db8::1"));
    }
}

/// The throttle's key for a client address: an IPv4 address as it is, an IPv6 one as its
/// network of `v6_prefix` bits (one host usually holds a whole /64, so counting per address
/// would give it 2^64 buckets). IPv4-mapped IPv6 addresses count as IPv4.
pub fn throttle_key(ip: IpAddr, v6_prefix: u8) -> String {
    match canonical(ip) {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            let net = std::net::Ipv6Addr::from(u128::from(a) & mask);
            format!("{net}/{bits}")
        }
    }
}

#[cfg(test)]
mod throttle_key_tests {
    use super::throttle_key;

    #[test]
    fn ipv6_clients_share_their_network_and_ipv4_clients_do_not() {
        let k = |s: &str| throttle_key(s.parse().unwrap(), 64);
        assert_eq!(k("2001:db8:1:2:3:4:5:6"), k("2001:db8:1:2:ffff::1"));
        assert_eq!(k("2001:db8:1:2::9"), "2001:db8:1:2::/64");
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("192.0.2.1"), "192.0.2.1");
        assert_ne!(k("192.0.2.1"), k("192.0.2.2"));
        assert_eq!(k("::ffff:192.0.2.1"), "192.0.2.1");
        assert_eq!(
            throttle_key("2001:db8::1".parse().unwrap(), 128),
            "2001:db8::1/128"
        );
        assert_eq!(
            throttle_key("2001:db8::1".parse().unwrap(), 48),
            "2001:db8::/48"
        );
    }
}
