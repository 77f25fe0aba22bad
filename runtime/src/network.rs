//! Attaching a VM to a container network namespace (Kata's "tcfilter" model).
//!
//! For each veth in the namespace the supervisor creates a tap beside it and redirects all
//! traffic both ways with an ingress qdisc and a `u32 match all → mirred egress redirect`
//! filter on each side. The guest NIC carries the veth's MAC and the agent gives it the veth's
//! addresses, MTU and routes, so for the outside world the VM *is* the veth's endpoint.
//!
//! The taps are not persistent: they vanish when the VMM and the supervisor close their fds.
//! The qdisc on each veth is removed explicitly on [`Attachment::detach`].

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use hull_protocol::network::{format_mac, Interface, IpNet, Route};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkLayerType};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteType};
use netlink_packet_route::tc::TcHandle;
use nix::sched::CloneFlags;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace {}: {source}", path.display())]
    Namespace { path: PathBuf, source: std::io::Error },
    #[error("network namespace {} has no veth to attach the VM to", .0.display())]
    NoInterfaces(PathBuf),
    /// The path names the host's own network namespace (or this process's): attaching would
    /// redirect the host's links into the VM.
    #[error("network namespace {} is the host's own; a VM cannot share the host's network", .0.display())]
    HostNamespace(PathBuf),
    #[error("recording the attachment: {0}")]
    Record(String),
    #[error("attaching {veth}: {source}")]
    Attach { veth: String, source: Box<NetworkError> },
    #[error("{0} already has an ingress qdisc (is another sandbox attached to this namespace?)")]
    AlreadyAttached(String),
    #[error("{what}: {source}")]
    Netlink { what: &'static str, source: rtnetlink::Error },
    #[error("tap {0} vanished")]
    TapVanished(String),
    #[error("no free tap name in this namespace")]
    NoFreeTap,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("network namespace worker panicked")]
    Worker,
}

type Result<T> = std::result::Result<T, NetworkError>;

/// Name what a netlink request was for.
fn netlink(what: &'static str) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    move |source| NetworkError::Io { what: what.into(), source }
}

/// A tap the VMM attaches a virtio-net device to.
pub struct Tap {
    pub fd: OwnedFd,
    /// The veth's MAC, which the guest NIC must carry.
    pub mac: String,
}

pub struct Attachment {
    netns_path: PathBuf,
    netns: File,
    pub taps: Vec<Tap>,
    veth_indexes: Vec<u32>,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    detached: bool,
}

/// Enter the network namespace at `path`, pair every veth with a tap, and collect what the
/// guest must mirror. Only veths are attached (a physical NIC, bridge or dummy in the
/// namespace is left alone), and the host's own namespace is refused. `record` is called with
/// what must be undone there before anything is changed, so a crash at any point leaves a
/// record. On error nothing is left in the namespace.
pub fn attach(path: &Path, record: &mut dyn FnMut(&Record) -> std::result::Result<(), String>) -> Result<Attachment> {
    let netns = File::open(path).map_err(|source| NetworkError::Namespace { path: path.to_path_buf(), source })?;
    refuse_host_namespace(&netns, path)?;
    let veths = in_netns(&netns, |handle| async move { list_veths(&handle).await })?;
    if veths.is_empty() {
        return Err(NetworkError::NoInterfaces(path.to_path_buf()));
    }
    record(&Record { netns: path.to_path_buf(), veth_indexes: veths.iter().map(|v| v.index).collect() })
        .map_err(NetworkError::Record)?;
    let found = in_netns(&netns, |handle| async move {
        // Every ingress qdisc this attach added, so a failure removes exactly those and never
        // another sandbox's redirect in a shared namespace.
        let mut added = Vec::new();
        let result = async {
            let mut taps = Vec::new();
            for veth in &veths {
                let fd = pair_with_tap(&handle, veth, &mut added)
                    .await
                    .map_err(|e| NetworkError::Attach { veth: veth.iface.name.clone(), source: Box::new(e) })?;
                taps.push(Tap { fd, mac: veth.iface.mac.clone() });
            }
            let routes = list_routes(&handle, &veths).await?;
            Ok((taps, routes))
        }
        .await;
        match result {
            Ok((taps, routes)) => {
                let indexes = veths.iter().map(|v| v.index).collect();
                let interfaces = veths.into_iter().map(|v| v.iface).collect();
                Ok((taps, indexes, interfaces, routes))
            }
            Err(e) => {
                for index in added {
                    let _ = remove_ingress(&handle, index).await;
                }
                Err(e)
            }
        }
    })?;
    let (taps, veth_indexes, interfaces, routes) = found;
    Ok(Attachment { netns_path: path.to_path_buf(), netns, taps, veth_indexes, interfaces, routes, detached: false })
}

/// What must be undone in a namespace if the supervisor dies before it can detach; kept in
/// the container's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub netns: PathBuf,
    pub veth_indexes: Vec<u32>,
}

impl Attachment {
    /// The namespace the VM is attached to.
    pub fn namespace(&self) -> &File {
        &self.netns
    }

    pub fn record(&self) -> Record {
        Record { netns: self.netns_path.clone(), veth_indexes: self.veth_indexes.clone() }
    }

    /// Remove the redirect from every veth (the taps go with their last fd).
    pub fn detach(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        self.taps.clear();
        if let Err(e) = remove_redirects(&self.netns, self.veth_indexes.clone()) {
            tracing::warn!("detaching from {}: {e:#}", self.netns_path.display());
        }
    }
}

/// Undo an attachment whose supervisor died (`hull delete` of a crashed container). The taps
/// died with their fds; the veths' ingress qdiscs remain until removed here.
pub fn clean_up(record: &Record) -> Result<()> {
    let netns = match File::open(&record.netns) {
        Ok(f) => f,
        // The namespace is gone, and everything in it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(NetworkError::Namespace { path: record.netns.clone(), source }),
    };
    remove_redirects(&netns, record.veth_indexes.clone())
}

fn remove_redirects(netns: &File, indexes: Vec<u32>) -> Result<()> {
    in_netns(netns, |handle| async move {
        for index in indexes {
            remove_ingress(&handle, index).await?;
        }
        Ok(())
    })
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Run `f` with an rtnetlink handle inside the namespace `netns`, on a thread of its own so
/// the rest of the process stays in the host namespace.
fn in_netns<T, F, Fut>(netns: &File, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| io("entering the network namespace")(e.into()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io("starting the netlink runtime"))?;
            rt.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
                tokio::spawn(connection);
                f(handle).await
            })
        })
        .join()
        .map_err(|_| NetworkError::Worker)?
    })
}

struct Veth {
    index: u32,
    iface: Interface,
}

/// A namespace file that is the host's network namespace (PID 1's) or this process's.
fn refuse_host_namespace(netns: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let theirs =
        netns.metadata().map(id).map_err(|source| NetworkError::Namespace { path: path.to_path_buf(), source })?;
    for host in ["/proc/1/ns/net", "/proc/self/ns/net"] {
        if std::fs::metadata(host).map(id).ok() == Some(theirs) {
            return Err(NetworkError::HostNamespace(path.to_path_buf()));
        }
    }
    Ok(())
}

/// Is this link a veth? (Its kind, from IFLA_LINKINFO.)
fn is_veth(link: &netlink_packet_route::link::LinkMessage) -> bool {
    use netlink_packet_route::link::{InfoKind, LinkInfo};
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

async fn list_veths(handle: &Handle) -> Result<Vec<Veth>> {
    let mut links = handle.link().get().execute();
    let mut veths = Vec::new();
    while let Some(link) = links.try_next().await.map_err(netlink("listing links"))? {
        if link.header.link_layer_type != LinkLayerType::Ether || !is_veth(&link) {
            continue;
        }
        let mut name = None;
        let mut mac = None;
        let mut mtu = 1500;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(a) if a.len() == 6 => mac = Some(format_mac(a)),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        let (Some(name), Some(mac)) = (name, mac) else { continue };
        if name.starts_with(TAP_PREFIX) {
            continue;
        }
        let mut addresses = Vec::new();
        let mut addrs = handle.address().get().set_link_index_filter(link.header.index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(netlink("listing addresses"))? {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    // Link-local IPv6 addresses derive from the MAC; the guest makes its own.
                    if matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80) {
                        continue;
                    }
                    addresses.push(IpNet { address: *ip, prefix_len: msg.header.prefix_len });
                }
            }
        }
        veths.push(Veth { index: link.header.index, iface: Interface { name, mac, mtu, addresses } });
    }
    Ok(veths)
}

const TAP_PREFIX: &str = "hulltap";

async fn pair_with_tap(handle: &Handle, veth: &Veth, added: &mut Vec<u32>) -> Result<OwnedFd> {
    if has_ingress(handle, veth.index).await? {
        return Err(NetworkError::AlreadyAttached(veth.iface.name.clone()));
    }
    let (name, tap) = create_free_tap(handle).await?;
    let mut links = handle.link().get().match_name(name.clone()).execute();
    let found = links.try_next().await.map_err(netlink("looking up the tap"))?;
    let tap_index = found.ok_or_else(|| NetworkError::TapVanished(name.clone()))?.header.index;
    let up = LinkUnspec::new_with_index(tap_index).mtu(veth.iface.mtu).up().build();
    handle.link().set(up).execute().await.map_err(netlink("bringing the tap up"))?;
    for (from, to) in [(veth.index, tap_index), (tap_index, veth.index)] {
        handle.qdisc().add(from as i32).ingress().execute().await.map_err(netlink("adding an ingress qdisc"))?;
        added.push(from);
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(0xffff_0000)
            // ETH_P_ALL, in network byte order as tc expects.
            .protocol(0x0003u16.to_be())
            .redirect(to)
            .map_err(netlink("building the mirred redirect"))?
            .execute()
            .await
            .map_err(netlink("adding the mirred redirect"))?;
    }
    Ok(tap)
}

async fn has_ingress(handle: &Handle, index: u32) -> Result<bool> {
    let mut qdiscs = handle.qdisc().get().index(index as i32).execute();
    while let Some(q) = qdiscs.try_next().await.map_err(netlink("listing qdiscs"))? {
        if q.header.index == index as i32 && q.header.parent == TcHandle::INGRESS {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Create a tap under the first `hulltapN` name not taken in this namespace.
async fn create_free_tap(handle: &Handle) -> Result<(String, OwnedFd)> {
    for n in 0..64 {
        let name = format!("{TAP_PREFIX}{n}");
        let mut existing = handle.link().get().match_name(name.clone()).execute();
        if matches!(existing.try_next().await, Ok(Some(_))) {
            continue;
        }
        return Ok((name.clone(), create_tap(&name)?));
    }
    Err(NetworkError::NoFreeTap)
}

async fn remove_ingress(handle: &Handle, index: u32) -> Result<()> {
    let mut req = handle.qdisc().del(index as i32);
    req.message_mut().header.parent = TcHandle::INGRESS;
    req.message_mut().header.handle = TcHandle::from(0xffff_0000);
    match req.execute().await {
        Ok(()) => Ok(()),
        // Already gone (the link may have been deleted with its namespace).
        Err(rtnetlink::Error::NetlinkError(e)) if matches!(e.raw_code(), -2 | -19 | -22) => Ok(()),
        Err(e) => Err(netlink("removing an ingress qdisc")(e)),
    }
}

/// Create a non-persistent tap (`IFF_TAP | IFF_NO_PI`) in the current network namespace.
fn create_tap(name: &str) -> Result<OwnedFd> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    let tun =
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(io("opening /dev/net/tun"))?;
    // SAFETY: zeroed ifreq is a valid value; the name is copied with its length bounded below.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(io(format!("tap name {name}"))(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads an ifreq we own and that outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &ifr) } != 0 {
        return Err(io(format!("creating tap {name}"))(std::io::Error::last_os_error()));
    }
    Ok(tun.into())
}

async fn list_routes(handle: &Handle, veths: &[Veth]) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    let queries = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
    for query in queries {
        let mut stream = handle.route().get(query).execute();
        while let Some(msg) = stream.try_next().await.map_err(netlink("listing routes"))? {
            let h = &msg.header;
            // Connected routes reappear when the guest adds the addresses; RA routes are the
            // guest's own business.
            if h.table != RouteHeader::RT_TABLE_MAIN
                || h.kind != RouteType::Unicast
                || matches!(h.protocol, RouteProtocol::Kernel | RouteProtocol::Ra)
            {
                continue;
            }
            let mut oif = None;
            let mut destination = None;
            let mut gateway = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(a) => destination = ip_of(a),
                    RouteAttribute::Gateway(a) => gateway = ip_of(a),
                    _ => {}
                }
            }
            let Some(device) = veths.iter().find(|v| Some(v.index) == oif).map(|v| v.iface.name.clone()) else {
                continue;
            };
            let destination = destination.map(|address| IpNet { address, prefix_len: h.destination_prefix_length });
            routes.push(Route { destination, gateway, device });
        }
    }
    Ok(routes)
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
