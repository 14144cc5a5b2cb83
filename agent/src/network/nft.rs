//! Service virtual IPs in nftables, in the manner of kube-proxy's nftables
//! mode: table `ip berth` with a verdict map from `ClusterIP . protocol .
//! port` to one chain per service port, whose single rule DNATs to a Ready
//! endpoint picked at random (`numgen random mod N`). The rule set is
//! written as one nft script and applied in one transaction: the first
//! time (and after any failure) the whole table is replaced, afterwards
//! only the chains and map elements that changed. Work per change is
//! therefore proportional to what changed, not to the number of services.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use ipnet::Ipv4Net;
use tokio::io::AsyncWriteExt;

pub const TABLE: &str = "berth";

/// One service port: where it listens and where it sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub cluster_ip: Ipv4Addr,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: &'static str,
    pub port: u16,
    /// Ready endpoints (address, target port), in a stable order.
    pub backends: Vec<(Ipv4Addr, u16)>,
}

/// Service ports by chain name (`svc-<namespace>-<name>-<port>-<protocol>`).
pub type RuleSet = BTreeMap<String, ServicePort>;

pub fn chain_name(namespace: &str, name: &str, port: u16, protocol: &str) -> String {
    format!("svc-{namespace}-{name}-{port}-{protocol}")
}

/// What the node-wide chains need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNat {
    pub bridge: String,
    pub node_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
}

fn element(s: &ServicePort) -> String {
    format!("{} . {} . {}", s.cluster_ip, s.protocol, s.port)
}

/// The DNAT rules of a service port: endpoint `i` of `n` is taken with
/// probability 1/(n-i) if none before it was, which picks each with
/// probability 1/n (as kube-proxy's iptables mode does). Plain rules, not a
/// map per service: the kernel finds a table's sets by walking a list, so
/// a set per service would make each sync quadratic in the service count.
fn dnat_rules(s: &ServicePort) -> Vec<String> {
    let n = s.backends.len();
    s.backends
        .iter()
        .enumerate()
        .map(|(i, (ip, port))| {
            let pick = if i + 1 < n {
                format!("numgen random mod {} == 0 ", n - i)
            } else {
                String::new()
            };
            format!("meta l4proto {} {pick}dnat ip to {ip}:{port}", s.protocol)
        })
        .collect()
}

/// The whole table, replacing whatever is there.
pub fn render_full(nat: &NodeNat, rules: &RuleSet) -> String {
    let mut out = String::with_capacity(256 + rules.len() * 160);
    let _ = writeln!(
        out,
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{"
    );
    out.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if !rules.is_empty() {
        out.push_str("    elements = {");
        for (i, (chain, s)) in rules.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(out, "{sep}{} : goto {chain}", element(s));
        }
        out.push_str(" }\n");
    }
    out.push_str("  }\n");
    out.push_str(
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n  }\n",
    );
    out.push_str("  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n    jump services\n  }\n");
    out.push_str("  chain output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n");
    // A pod that reaches a service endpoint on its own bridge would get
    // the reply straight from the endpoint, not through the NAT that
    // changed the address: such connections leave as the bridge's address.
    let _ = writeln!(
        out,
        "  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    ct status dnat ip saddr {} oifname \"{}\" masquerade\n    ip saddr {} ip daddr != {} masquerade\n  }}",
        nat.node_cidr, nat.bridge, nat.cluster_cidr, nat.cluster_cidr
    );
    for (chain, s) in rules {
        let _ = writeln!(out, "  chain {chain} {{");
        for rule in dnat_rules(s) {
            let _ = writeln!(out, "    {rule}");
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// The changes from `old` to `new` as one script; empty when nothing
/// changed.
pub fn render_changes(old: &RuleSet, new: &RuleSet) -> String {
    let mut out = String::new();
    for (chain, s) in old {
        if new.get(chain).is_none_or(|n| element(n) != element(s)) {
            let _ = writeln!(
                out,
                "delete element ip {TABLE} service-ips {{ {} }}",
                element(s)
            );
        }
        if !new.contains_key(chain) {
            let _ = writeln!(out, "delete chain ip {TABLE} {chain}");
        }
    }
    for (chain, s) in new {
        let before = old.get(chain);
        if before == Some(s) {
            continue;
        }
        if before.is_none() {
            let _ = writeln!(out, "add chain ip {TABLE} {chain}");
        } else if before.is_some_and(|b| b.backends != s.backends) {
            let _ = writeln!(out, "flush chain ip {TABLE} {chain}");
        }
        if before.is_none_or(|b| b.backends != s.backends) {
            for rule in dnat_rules(s) {
                let _ = writeln!(out, "add rule ip {TABLE} {chain} {rule}");
            }
        }
        if before.is_none_or(|b| element(b) != element(s)) {
            let _ = writeln!(
                out,
                "add element ip {TABLE} service-ips {{ {} : goto {chain} }}",
                element(s)
            );
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install Debian's nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the rule set: {0}")]
    Refused(String),
}

/// Applies `script` in one transaction (`nft -f -`).
pub async fn apply(script: &str) -> Result<(), NftError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(NftError::Spawn)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(NftError::Spawn)?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(NftError::Refused(
            stderr.lines().take(6).collect::<Vec<_>>().join(" | "),
        ))
    }
}

/// Marks the accept rules the agent puts in Docker's chain.
const DOCKER_USER_MARK: &str = "berth: forward pod traffic";

/// Docker Engine sets the policy of iptables' FORWARD chain to DROP, which
/// drops what a node forwards for its pods (to other nodes' pods, or out),
/// and a drop in any table is final whatever our own table accepts. Where
/// Docker's `DOCKER-USER` chain exists (iptables-nft, Debian's default),
/// the agent inserts accept rules for the cluster CIDR there, once.
/// Returns whether the chain exists.
pub async fn allow_forwarding_past_docker(cluster: Ipv4Net) -> Result<bool, NftError> {
    let listed = tokio::process::Command::new("nft")
        .args(["list", "chain", "ip", "filter", "DOCKER-USER"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(NftError::Spawn)?;
    if !listed.status.success() {
        return Ok(false);
    }
    if String::from_utf8_lossy(&listed.stdout).contains(DOCKER_USER_MARK) {
        return Ok(true);
    }
    let script = ["saddr", "daddr"]
        .iter()
        .map(|dir| {
            format!(
                "insert rule ip filter DOCKER-USER ip {dir} {cluster} counter accept comment \"{DOCKER_USER_MARK}\"\n"
            )
        })
        .collect::<String>();
    apply(&script).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(ip: &str, backends: &[(&str, u16)]) -> ServicePort {
        ServicePort {
            cluster_ip: ip.parse().unwrap(),
            protocol: "tcp",
            port: 80,
            backends: backends
                .iter()
                .map(|(i, p)| (i.parse().unwrap(), *p))
                .collect(),
        }
    }

    fn nat() -> NodeNat {
        NodeNat {
            bridge: "berth0".into(),
            node_cidr: "10.244.1.0/24".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        }
    }

    #[test]
    fn the_full_table_maps_each_service_port_to_its_chain() {
        let rules = RuleSet::from([(
            chain_name("default", "echo", 80, "tcp"),
            port("10.96.0.10", &[("10.244.1.2", 8080), ("10.244.2.2", 8080)]),
        )]);
        let script = render_full(&nat(), &rules);
        assert!(script.contains("10.96.0.10 . tcp . 80 : goto svc-default-echo-80-tcp"));
        assert!(script.contains(
            "    meta l4proto tcp numgen random mod 2 == 0 dnat ip to 10.244.1.2:8080\n    meta l4proto tcp dnat ip to 10.244.2.2:8080\n"
        ));
        assert!(script.starts_with("table ip berth\ndelete table ip berth\n"));
    }

    #[test]
    fn changes_touch_only_what_changed() {
        let a = chain_name("default", "a", 80, "tcp");
        let b = chain_name("default", "b", 80, "tcp");
        let c = chain_name("default", "c", 80, "tcp");
        let old = RuleSet::from([
            (a.clone(), port("10.96.0.1", &[("10.244.1.2", 80)])),
            (b.clone(), port("10.96.0.2", &[("10.244.1.3", 80)])),
        ]);
        let mut new = old.clone();
        new.remove(&b);
        new.get_mut(&a)
            .unwrap()
            .backends
            .push(("10.244.2.2".parse().unwrap(), 80));
        new.insert(c.clone(), port("10.96.0.3", &[]));
        let script = render_changes(&old, &new);
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            [
                "delete element ip berth service-ips { 10.96.0.2 . tcp . 80 }",
                "delete chain ip berth svc-default-b-80-tcp",
                "flush chain ip berth svc-default-a-80-tcp",
                "add rule ip berth svc-default-a-80-tcp meta l4proto tcp numgen random mod 2 == 0 dnat ip to 10.244.1.2:80",
                "add rule ip berth svc-default-a-80-tcp meta l4proto tcp dnat ip to 10.244.2.2:80",
                "add chain ip berth svc-default-c-80-tcp",
                "add element ip berth service-ips { 10.96.0.3 . tcp . 80 : goto svc-default-c-80-tcp }",
            ]
        );
        assert_eq!(render_changes(&new, &new), "");
    }
}
