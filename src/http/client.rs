//! Who the client is, as far as the connection and a trusted proxy tell.

use std::net::IpAddr;

use ipnet::IpNet;

/// The client's address: the peer's, unless the peer is one of `trusted` proxies; then the
/// right-most hop of `X-Forwarded-For` that is not a trusted proxy (each proxy appends the
/// address it got the request from, so hops left of the first untrusted one could be
/// forged by the client). A header that does not parse is not believed: the peer it is.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let hops: Option<Vec<IpAddr>> = header
        .split(',')
        .map(|hop| hop.trim().parse::<IpAddr>().ok())
        .collect();
    let Some(hops) = hops else {
        return Some(peer);
    };
    hops.iter()
        .rev()
        .find(|hop| !is_trusted(hop))
        .or(hops.first())
        .copied()
        .or(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed_and_the_rightmost_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer: its header is ignored.
        assert_eq!(
            client_address(Some(ip("203.0.113.9")), Some("1.2.3.4"), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Behind two trusted proxies: the client the first one saw; a forged left part is
        // ignored.
        assert_eq!(
            client_address(
                Some(ip("10.0.0.2")),
                Some("6.6.6.6, 198.51.100.7, 10.0.0.1"),
                &trusted
            ),
            Some(ip("198.51.100.7"))
        );
        // No header, or a broken one: the peer.
        assert_eq!(
            client_address(Some(ip("10.0.0.2")), None, &trusted),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            client_address(Some(ip("10.0.0.2")), Some("not-an-ip"), &trusted),
            Some(ip("10.0.0.2"))
        );
        // Nothing trusted: the peer, always.
        assert_eq!(
            client_address(Some(ip("10.0.0.2")), Some("1.2.3.4"), &[]),
            Some(ip("10.0.0.2"))
        );
    }
}
