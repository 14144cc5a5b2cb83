//! Links, addresses and routes through rtnetlink: the node's bridge, a veth
//! pair per pod (one end on the bridge, the other as `eth0` in the pod's
//! namespace) and the routes to other nodes' pod CIDRs. Every step checks
//! what is there first, so running it again repairs rather than fails.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::RouteAddress;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::Handle;
use rtnetlink::LinkBridge;
use rtnetlink::LinkUnspec;
use rtnetlink::LinkVeth;
use rtnetlink::RouteMessageBuilder;

use super::netns;

/// Marks the routes the agent owns (rtnetlink protocol number), so that it
/// removes stale ones and never touches anyone else's.
pub const ROUTE_PROTOCOL: u8 = 0xbe;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("link {0} does not exist")]
    Missing(String),
}

/// A netlink connection in the agent's own network namespace.
pub fn connect() -> std::io::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    Ok(handle)
}

pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        // The kernel answers a lookup of a missing name with ENODEV.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_address(handle: &Handle, index: u32, addr: Ipv4Net) -> Result<(), LinkError> {
    let mut existing = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = existing.try_next().await? {
        let has = msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == addr.addr()));
        if has && msg.header.prefix_len == addr.prefix_len() {
            return Ok(());
        }
    }
    handle
        .address()
        .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
        .execute()
        .await?;
    Ok(())
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), LinkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    Ok(())
}

/// The bridge `name`, up, holding `gateway` (the first address of the
/// node's pod CIDR, with the CIDR's prefix).
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gateway: Ipv4Net,
) -> Result<u32, LinkError> {
    let index = match index_of(handle, name).await? {
        Some(i) => i,
        None => {
            handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await?;
            index_of(handle, name)
                .await?
                .ok_or_else(|| LinkError::Missing(name.into()))?
        }
    };
    ensure_address(handle, index, gateway).await?;
    set_up(handle, index).await?;
    Ok(index)
}

/// Names of a pod's veth ends in the node's namespace (at most 15 bytes,
/// the kernel's limit): the host end, and the pod end before it moves.
pub fn veth_names(uid: &str) -> (String, String) {
    let short: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    (format!("vb{short}"), format!("vp{short}"))
}

/// Wires the pod namespace at `ns` to the bridge: a veth pair whose pod end
/// becomes `eth0` with `ip`, default route via `gateway`.
pub async fn attach_pod(
    handle: &Handle,
    bridge: u32,
    uid: &str,
    ns: &Path,
    ip: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<(), LinkError> {
    let (host, peer) = veth_names(uid);
    if index_of(handle, &host).await?.is_none() {
        if let Some(stale) = index_of(handle, &peer).await? {
            handle.link().del(stale).execute().await?;
        }
        handle
            .link()
            .add(LinkVeth::new(&host, &peer).build())
            .execute()
            .await?;
        let peer_index = index_of(handle, &peer)
            .await?
            .ok_or_else(|| LinkError::Missing(peer.clone()))?;
        let ns_file = std::fs::File::open(ns)?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(peer_index)
                    .setns_by_fd(ns_file.as_raw_fd())
                    .build(),
            )
            .execute()
            .await?;
    }
    let host_index = index_of(handle, &host)
        .await?
        .ok_or_else(|| LinkError::Missing(host.clone()))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await?;
    let ns = ns.to_path_buf();
    tokio::task::spawn_blocking(move || netns::run_in(&ns, move || inside_pod(&peer, ip, gateway)))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))???;
    Ok(())
}

/// Configures the pod's side from inside its namespace: `lo` up, the veth
/// end renamed `eth0` with the pod's address, and the default route.
fn inside_pod(peer: &str, ip: Ipv4Net, gateway: Ipv4Addr) -> Result<(), LinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let handle = connect()?;
        if let Some(lo) = index_of(&handle, "lo").await? {
            set_up(&handle, lo).await?;
        }
        if let Some(index) = index_of(&handle, peer).await? {
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).name("eth0").build())
                .execute()
                .await?;
        }
        let eth0 = index_of(&handle, "eth0")
            .await?
            .ok_or_else(|| LinkError::Missing("eth0".into()))?;
        ensure_address(&handle, eth0, ip).await?;
        set_up(&handle, eth0).await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(eth0)
            .build();
        match handle.route().add(default).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => other.map_err(LinkError::from),
        }
    })
}

/// Removes the pod's veth pair (deleting one end deletes both).
pub async fn detach_pod(handle: &Handle, uid: &str) -> Result<(), LinkError> {
    let (host, peer) = veth_names(uid);
    for name in [host, peer] {
        delete_link(handle, &name).await?;
    }
    Ok(())
}

/// Deletes link `name` if it exists.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<(), LinkError> {
    if let Some(index) = index_of(handle, name).await? {
        handle.link().del(index).execute().await?;
    }
    Ok(())
}

/// The routes the agent owns now: destination CIDR and gateway.
pub async fn owned_routes(handle: &Handle) -> Result<Vec<(Ipv4Net, Ipv4Addr)>, LinkError> {
    let mut out = Vec::new();
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await? {
        if r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
            continue;
        }
        let mut dst = None;
        let mut via = None;
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
                _ => {}
            }
        }
        if let (Some(dst), Some(via)) = (dst, via) {
            if let Ok(net) = Ipv4Net::new(dst, r.header.destination_prefix_length) {
                out.push((net, via));
            }
        }
    }
    Ok(out)
}

fn route(dst: Ipv4Net, via: Ipv4Addr) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .gateway(via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

pub async fn add_route(handle: &Handle, dst: Ipv4Net, via: Ipv4Addr) -> Result<(), LinkError> {
    handle
        .route()
        .add(route(dst, via))
        .replace()
        .execute()
        .await?;
    Ok(())
}

pub async fn del_route(handle: &Handle, dst: Ipv4Net, via: Ipv4Addr) -> Result<(), LinkError> {
    handle.route().del(route(dst, via)).execute().await?;
    Ok(())
}

/// A route for the service CIDR over the bridge, so that a node with no
/// default route still sends ClusterIP traffic into its NAT rules.
pub async fn ensure_device_route(handle: &Handle, dst: Ipv4Net, dev: u32) -> Result<(), LinkError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .output_interface(dev)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build();
    handle.route().add(msg).replace().execute().await?;
    Ok(())
}
