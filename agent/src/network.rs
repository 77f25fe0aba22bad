//! Guest NIC configuration over rtnetlink, mirroring the veths the host found.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use hull_protocol::network::{self, Interface, Route};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

pub fn configure(interfaces: &[Interface], routes: &[Route]) -> Result<()> {
    network::validate(interfaces, routes).map_err(|e| anyhow!(e))?;
    // The guest's addresses are the veths'; duplicate detection against ourselves only delays.
    for conf in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    rt.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        let mut indexes = Vec::new();
        for iface in interfaces {
            indexes.push((iface.name.clone(), configure_interface(&handle, iface).await?));
        }
        // Routes without a gateway first: gateway routes need them to resolve.
        let mut ordered: Vec<&Route> = routes.iter().collect();
        ordered.sort_by_key(|r| r.gateway.is_some());
        for route in ordered {
            let index = indexes.iter().find(|(n, _)| *n == route.device).map(|(_, i)| *i).unwrap();
            add_route(&handle, route, index).await.with_context(|| format!("adding route {route:?}"))?;
        }
        Ok(())
    })
}

async fn configure_interface(handle: &Handle, iface: &Interface) -> Result<u32> {
    let mac = network::parse_mac(&iface.mac).unwrap();
    let mut links = handle.link().get().execute();
    let mut index = None;
    while let Some(link) = links.try_next().await? {
        if link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(addr) if addr[..] == mac[..])) {
            index = Some(link.header.index);
            break;
        }
    }
    let Some(index) = index else { bail!("no guest NIC with MAC {}", iface.mac) };
    handle.link().set(LinkUnspec::new_with_index(index).down().build()).execute().await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).name(iface.name.clone()).mtu(iface.mtu).build())
        .execute()
        .await
        .with_context(|| format!("naming the NIC {}", iface.name))?;
    for addr in &iface.addresses {
        handle
            .address()
            .add(index, addr.address, addr.prefix_len)
            .execute()
            .await
            .with_context(|| format!("adding {addr} to {}", iface.name))?;
    }
    handle.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await?;
    Ok(index)
}

async fn add_route(handle: &Handle, route: &Route, index: u32) -> Result<()> {
    let family_v4 = match (route.destination, route.gateway) {
        (Some(d), _) => d.address.is_ipv4(),
        (None, Some(g)) => g.is_ipv4(),
        (None, None) => bail!("a default route needs a gateway"),
    };
    let message = if family_v4 {
        let mut b = RouteMessageBuilder::<std::net::Ipv4Addr>::new().output_interface(index);
        if let Some(d) = route.destination {
            let IpAddr::V4(a) = d.address else { unreachable!() };
            b = b.destination_prefix(a, d.prefix_len);
        }
        if let Some(IpAddr::V4(g)) = route.gateway {
            b = b.gateway(g);
        }
        b.build()
    } else {
        let mut b = RouteMessageBuilder::<std::net::Ipv6Addr>::new().output_interface(index);
        if let Some(d) = route.destination {
            let IpAddr::V6(a) = d.address else { unreachable!() };
            b = b.destination_prefix(a, d.prefix_len);
        }
        if let Some(IpAddr::V6(g)) = route.gateway {
            b = b.gateway(g);
        }
        b.build()
    };
    handle.route().add(message).execute().await?;
    Ok(())
}
