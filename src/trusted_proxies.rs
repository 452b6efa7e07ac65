//! `trusted_proxies`: the peers whose `X-Forwarded-Proto` and `X-Forwarded-Host` the
//! gateway passes on.
//!
//! Beside an assistant container the gateway usually sits behind an ingress or a load
//! balancer that ends TLS and says so in `X-Forwarded-Proto: https`. Overwritten with
//! the gateway's own `http`, the upstream builds `http://` links and redirects for a
//! site served over https. Passed on from anyone, a client could claim any scheme and
//! host. So the headers are kept only from peers the operator names, as address ranges;
//! from everyone else they are set from the connection, as before.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// The address ranges whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<IpNet>,
}

/// Why an entry of `trusted_proxies` is not an address range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("invalid address range \"{0}\": expected an IP address or CIDR such as 10.0.0.0/8, 192.168.1.7 or fd00::/8")]
    Syntax(String),
    #[error("\"{given}\" has host bits set below its /{prefix}; write the range's first address, {network}")]
    HostBits {
        given: String,
        prefix: u8,
        network: IpNet,
    },
}

impl TrustedProxies {
    /// Trusts the ranges given; see [`parse_range`].
    pub fn new(ranges: Vec<IpNet>) -> TrustedProxies {
        TrustedProxies { ranges }
    }

    /// Whether `peer` is in one of the ranges. An IPv4 client on a dual-stack `[::]`
    /// listener arrives as `::ffff:a.b.c.d` and is matched as `a.b.c.d`.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.ranges.iter().any(|range| range.contains(&peer))
    }

    /// The ranges as written back in `/config`.
    pub fn ranges(&self) -> &[IpNet] {
        &self.ranges
    }
}

/// One entry: an address (`10.1.2.3`, `::1`: that address alone) or a CIDR range whose
/// address is the range's first (`10.0.0.0/8`; `10.1.2.3/8` is refused, since it is
/// not clear whether the one address or the range was meant).
pub fn parse_range(text: &str) -> Result<IpNet, RangeError> {
    let text = text.trim();
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(ipv4_if_mapped(IpNet::from(address)));
    }
    let range: IpNet = text
        .parse()
        .map_err(|_| RangeError::Syntax(text.to_owned()))?;
    if range.trunc() != range {
        return Err(RangeError::HostBits {
            given: text.to_owned(),
            prefix: range.prefix_len(),
            network: range.trunc(),
        });
    }
    Ok(ipv4_if_mapped(range))
}

/// A range of IPv4-mapped addresses (`::ffff:10.0.0.1`, as a dual-stack listener and
/// `X-Forwarded-For` show an IPv4 peer, or `::ffff:10.0.0.0/104`) as the IPv4 range
/// it means: [`TrustedProxies::contains`] matches such a peer as IPv4.
fn ipv4_if_mapped(range: IpNet) -> IpNet {
    match range {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(range, IpNet::V4),
            None => range,
        },
        _ => range,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| parse_range(r).unwrap()).collect())
    }

    #[test]
    fn addresses_and_ranges_of_both_families() {
        let proxies = trusted(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(proxies.contains("10.255.0.1".parse().unwrap()));
        assert!(proxies.contains("192.168.1.7".parse().unwrap()));
        assert!(!proxies.contains("192.168.1.8".parse().unwrap()));
        assert!(proxies.contains("fd12::1".parse().unwrap()));
        assert!(!proxies.contains("fe80::1".parse().unwrap()));
        assert!(!proxies.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_ranges() {
        let proxies = trusted(&["127.0.0.0/8"]);
        assert!(proxies.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!proxies.contains("::1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_entries_match_the_ipv4_peers_they_name() {
        let proxies = trusted(&["::ffff:127.0.0.1", "::ffff:10.0.0.0/104"]);
        assert!(proxies.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(proxies.contains("127.0.0.1".parse().unwrap()));
        assert!(proxies.contains("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!proxies.contains("127.0.0.2".parse().unwrap()));
        assert!(!proxies.contains("::1".parse().unwrap()));
        assert_eq!(
            parse_range("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn nothing_is_trusted_by_default() {
        let proxies = TrustedProxies::default();
        assert!(!proxies.contains("127.0.0.1".parse().unwrap()));
        assert!(!proxies.contains("::1".parse().unwrap()));
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        assert_eq!(
            parse_range("10.0.0.0/33"),
            Err(RangeError::Syntax("10.0.0.0/33".into()))
        );
        assert!(matches!(
            parse_range("localhost"),
            Err(RangeError::Syntax(_))
        ));
        let error = parse_range("10.1.2.3/8").unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"10.1.2.3/8\" has host bits set below its /8; write the range's first address, 10.0.0.0/8"
        );
    }
}
