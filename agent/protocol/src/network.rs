//! Network configuration the host hands to the guest: the veths of the container's network
//! namespace, mirrored onto the guest's NICs (same MAC, addresses, MTU and routes).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Guest path of the network namespace that holds the mirrored NICs; containers of a
/// sandbox with a named network namespace join it.
pub const SANDBOX_NETNS: &str = "/run/hull/netns/sandbox";

pub const MAX_INTERFACES: usize = 16;
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    pub fn valid(&self) -> bool {
        self.prefix_len <= if self.address.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Name to give the guest NIC (the veth's name in the namespace, e.g. `eth0`).
    pub name: String,
    /// The veth's MAC, `aa:bb:cc:dd:ee:ff`; the guest NIC already carries it and is found by it.
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `None` is the default route.
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// Interface name (one of the [`Interface`] names).
    pub device: String,
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(mac: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Check a configuration before acting on any of it.
pub fn validate(interfaces: &[Interface], routes: &[Route]) -> Result<(), String> {
    if interfaces.len() > MAX_INTERFACES {
        return Err(format!("{} interfaces exceed the limit of {MAX_INTERFACES}", interfaces.len()));
    }
    if routes.len() > MAX_ROUTES {
        return Err(format!("{} routes exceed the limit of {MAX_ROUTES}", routes.len()));
    }
    for iface in interfaces {
        let name_ok = !iface.name.is_empty()
            && iface.name.len() < 16
            && iface.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(format!("invalid interface name {:?}", iface.name));
        }
        if parse_mac(&iface.mac).is_none() {
            return Err(format!("interface {}: invalid MAC {:?}", iface.name, iface.mac));
        }
        if !(68..=65535).contains(&iface.mtu) {
            return Err(format!("interface {}: MTU {} out of range", iface.name, iface.mtu));
        }
        if iface.addresses.len() > MAX_ADDRESSES {
            return Err(format!("interface {}: too many addresses", iface.name));
        }
        if let Some(bad) = iface.addresses.iter().find(|a| !a.valid()) {
            return Err(format!("interface {}: invalid address {bad}", iface.name));
        }
    }
    for route in routes {
        if !interfaces.iter().any(|i| i.name == route.device) {
            return Err(format!("route via unknown device {:?}", route.device));
        }
        if let Some(dest) = route.destination {
            if !dest.valid() {
                return Err(format!("invalid route destination {dest}"));
            }
            if route.gateway.is_some_and(|g| g.is_ipv4() != dest.address.is_ipv4()) {
                return Err(format!("route to {dest}: gateway family differs"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface() -> Interface {
        Interface {
            name: "eth0".into(),
            mac: "02:42:0a:c8:00:02".into(),
            mtu: 1500,
            addresses: vec![IpNet { address: "10.200.0.2".parse().unwrap(), prefix_len: 24 }],
        }
    }

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("02:42:0A:c8:00:02").unwrap();
        assert_eq!(format_mac(&mac), "02:42:0a:c8:00:02");
        for bad in ["", "02:42", "02:42:0a:c8:00:02:00", "zz:42:0a:c8:00:02", "2:42:0a:c8:00:002"] {
            assert!(parse_mac(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn validation() {
        let route = Route { destination: None, gateway: Some("10.200.0.1".parse().unwrap()), device: "eth0".into() };
        assert!(validate(&[iface()], std::slice::from_ref(&route)).is_ok());
        let mut bad = iface();
        bad.addresses[0].prefix_len = 33;
        assert!(validate(&[bad], &[]).is_err());
        let mut bad = iface();
        bad.name = "../../x".into();
        assert!(validate(&[bad], &[]).is_err());
        let stray = Route { device: "eth9".into(), ..route };
        assert!(validate(&[iface()], &[stray]).is_err());
        assert!(validate(&vec![iface(); MAX_INTERFACES + 1], &[]).is_err());
    }
}
