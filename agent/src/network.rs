//! Guest NIC configuration over rtnetlink, mirroring the veths the host found.
//!
//! The NICs move out of the agent's namespace into a sandbox network namespace pinned at
//! [`hull_protocol::network::SANDBOX_NETNS`], which containers join by path: a container in
//! the agent's own namespace would count as "host network" (no `net.*` sysctls, for one).

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use hull_protocol::network::{self, Interface, Route};
use netlink_packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

pub fn configure(interfaces: &[Interface], routes: &[Route]) -> Result<()> {
    network::validate(interfaces, routes).map_err(|e| anyhow!(e))?;
    let netns = sandbox_netns()?;
    // Hand the NICs over to the sandbox namespace, from the agent's.
    block_on(async {
        let handle = connect()?;
        for iface in interfaces {
            let index = find_by_mac(&handle, &iface.mac).await?;
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).setns_by_fd(netns.as_raw_fd()).build())
                .execute()
                .await
                .with_context(|| format!("moving the NIC for {} into the sandbox namespace", iface.name))?;
        }
        Ok(())
    })?;
    // Configure them there, on a thread that entered it.
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("entering the sandbox namespace")?;
            // The guest's addresses are the veths'; duplicate detection against ourselves only delays.
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0");
            }
            configure_here(interfaces, routes)
        })
        .join()
        .map_err(|_| anyhow!("network configuration thread panicked"))?
    })
}

/// The sandbox network namespace, created (and pinned by a bind mount) on first use.
fn sandbox_netns() -> Result<std::fs::File> {
    let path = std::path::Path::new(network::SANDBOX_NETNS);
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap())?;
        std::fs::File::create(path)?;
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("creating the sandbox namespace")?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    None::<&str>,
                    nix::mount::MsFlags::MS_BIND,
                    None::<&str>,
                )
                .context("pinning the sandbox namespace")?;
                Ok(())
            })
            .join()
            .map_err(|_| anyhow!("namespace thread panicked"))?
        })?;
    }
    Ok(std::fs::File::open(path)?)
}

fn connect() -> Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_io().build()?.block_on(f)
}

async fn find_by_mac(handle: &Handle, mac: &str) -> Result<u32> {
    let mac = network::parse_mac(mac).unwrap();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        if link.attributes.iter().any(|a| matches!(a, LinkAttribute::Address(addr) if addr[..] == mac[..])) {
            return Ok(link.header.index);
        }
    }
    bail!("no guest NIC with MAC {}", network::format_mac(&mac))
}

/// Configure the NICs and routes in the current thread's namespace.
fn configure_here(interfaces: &[Interface], routes: &[Route]) -> Result<()> {
    block_on(async {
        let handle = connect()?;
        if let Ok(lo) = find_by_name(&handle, "lo").await {
            handle.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await?;
        }
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

async fn find_by_name(handle: &Handle, name: &str) -> Result<u32> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    Ok(links.try_next().await?.ok_or_else(|| anyhow!("no link {name}"))?.header.index)
}

async fn configure_interface(handle: &Handle, iface: &Interface) -> Result<u32> {
    let index = find_by_mac(handle, &iface.mac).await?;
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
