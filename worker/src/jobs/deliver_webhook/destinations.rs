//! Which addresses a webhook may reach by default.

use std::net::IpAddr;

/// Networks a webhook never reaches unless `WEBHOOK_ALLOW_PRIVATE_NETWORKS`: everything but
/// global unicast. IPv4: "this" network, private, shared (carrier-grade NAT), loopback, link
/// local, IETF protocol assignments, documentation, benchmarking, the 6to4 relay, multicast
/// and reserved (broadcast included). IPv6 outside 2000::/3 (so loopback, unspecified,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, unique local, link local, site local
/// and multicast), and inside it the ranges that tunnel to IPv4 (6to4 2002::/16, Teredo
/// 2001::/32), ORCHID and documentation. An IPv4-mapped address is judged as IPv4.
static NOT_GLOBAL: std::sync::LazyLock<Vec<ipnet::IpNet>> = std::sync::LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "2001::/32",
        "2001:10::/28",
        "2001:20::/28",
        "2001:db8::/32",
        "2002::/16",
        "3fff::/20",
    ]
    .iter()
    .map(|net| net.parse().expect("a valid network"))
    .collect()
});

/// Whether a webhook may reach `ip` by default: a global unicast address only.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None if (v6.segments()[0] & 0xe000) != 0x2000 => return false,
            None => ip,
        },
        v4 => v4,
    };
    !NOT_GLOBAL.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_unicast_addresses_are_reachable_by_default() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
        ] {
            assert!(!is_global_unicast(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"] {
            assert!(is_global_unicast(ip.parse().unwrap()), "{ip}");
        }
    }
}
