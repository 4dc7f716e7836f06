//! The pod's gateways: the node's end of the pod's link (a CNI bridge's address, `cilium_host`),
//! an address of the node that its Node object does not list. kube-proxy opens NodePorts on
//! every address of the node, so a connection to a gateway and a NodePort leads to a Service's
//! backends like one to the node's listed address (see `podwall_policy::services`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `RTF_GATEWAY`: the route goes through a next hop.
const RTF_GATEWAY: u32 = 0x2;

/// The next hops of the calling thread's network namespace's routes (IPv4 and IPv6), sorted;
/// none when the route tables cannot be read (then NodePorts are known at the node's listed
/// addresses only).
pub(crate) fn read() -> Vec<IpAddr> {
    let table = |path: &str| {
        std::fs::read_to_string(path).unwrap_or_else(|e| {
            // A kernel without IPv6 has no ipv6_route, and no IPv6 gateway to miss.
            if !(path.ends_with("ipv6_route") && e.kind() == std::io::ErrorKind::NotFound) {
                tracing::warn!(path, error = %e, "cannot read the pod's routes: NodePorts and host ports at its gateways are judged as plain addresses");
            }
            String::new()
        })
    };
    let (v4, v6) = (table("/proc/net/route"), table("/proc/net/ipv6_route"));
    let mut all: Vec<IpAddr> = ipv4(&v4).chain(ipv6(&v6)).collect();
    all.sort();
    all.dedup();
    all
}

/// Gateways of `/proc/net/route`: `Iface Destination Gateway Flags ...`, addresses as the
/// kernel's 32-bit words in hexadecimal (in the machine's byte order).
fn ipv4(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let gateway = u32::from_str_radix(fields.get(2)?, 16).ok()?;
        let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
        let ip = Ipv4Addr::from(gateway.to_ne_bytes());
        (flags & RTF_GATEWAY != 0 && !ip.is_unspecified()).then_some(IpAddr::V4(ip))
    })
}

/// Next hops of `/proc/net/ipv6_route`: `dest plen src plen next_hop metric refcnt use flags
/// iface`, addresses as 32 hexadecimal digits.
fn ipv6(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines().filter_map(|line| {
        let hop = line.split_whitespace().nth(4)?;
        let ip = Ipv6Addr::from(u128::from_str_radix(hop, 16).ok()?);
        (hop.len() == 32 && !ip.is_unspecified()).then_some(IpAddr::V6(ip))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_next_hops_are_read_and_direct_routes_are_not() {
        // 10.244.1.1 as this machine's kernel writes it; a direct route to the pod's subnet.
        let word = u32::from_ne_bytes([10, 244, 1, 1]);
        let v4 = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t{word:08X}\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             eth0\t{word:08X}\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        );
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
                  fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(
            ipv4(&v4).collect::<Vec<_>>(),
            ["10.244.1.1".parse::<IpAddr>().expect("ip")]
        );
        assert_eq!(
            ipv6(v6).collect::<Vec<_>>(),
            ["fd00::1".parse::<IpAddr>().expect("ip")]
        );
        if cfg!(target_endian = "little") {
            // A line as this machine's kernel wrote it for `default via 10.244.1.1`.
            let line = "Iface\tDestination\tGateway\tFlags\nEth0\t00000000\t0101F40A\t0003\n";
            assert_eq!(
                ipv4(line).collect::<Vec<_>>(),
                ["10.244.1.1".parse::<IpAddr>().expect("ip")]
            );
        }
        assert_eq!(ipv4("garbage\nmore garbage here\n").count(), 0);
        assert_eq!(ipv6("x y z w v\n").count(), 0);
    }
}
