//! The run's network: a fabric namespace holding a bridge, and a namespace
//! per member (controller or agent process) linked to it by a veth pair, so
//! that a partition is real packet loss. Faults are nftables rules in a
//! member's own table (`inet berth-chaos`) and traffic shaping on its link.
//! Everything is made under one name prefix and removed on drop, also after
//! a failure, together with what is left of earlier runs whose process died.

use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;

/// The fabric's subnet: private, and reachable only inside the namespaces.
pub const SUBNET: &str = "10.253.0";

#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source} (berth-chaos needs iproute2, nftables and util-linux's nsenter)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// Runs a command to completion; its stdout, or what it said on failure.
pub fn run(program: &str, args: &[&str]) -> Result<String, FabricError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| FabricError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(FabricError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `run` off the async workers.
pub async fn run_async(program: &str, args: &[&str]) -> Result<String, FabricError> {
    let program = program.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&program, &args)
    })
    .await
    .expect("command task")
}

/// A member's namespace and address on the fabric.
#[derive(Clone, Debug)]
pub struct Member {
    pub netns: String,
    pub ip: String,
}

impl Member {
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// Runs `program args` inside this member's network namespace.
    pub async fn exec(&self, program: &str, args: &[&str]) -> Result<String, FabricError> {
        let mut all = vec!["netns", "exec", &self.netns, program];
        all.extend_from_slice(args);
        run_async("ip", &all).await
    }

    /// Drops every packet arriving from `peers`.
    pub async fn drop_from(&self, peers: &[&Member]) -> Result<(), FabricError> {
        for peer in peers {
            let rule = format!("add rule inet berth-chaos input ip saddr {} drop", peer.ip);
            self.exec("nft", &[&rule]).await?;
        }
        Ok(())
    }

    /// Drops `percent` of the packets arriving from anywhere.
    pub async fn lose(&self, percent: u32) -> Result<(), FabricError> {
        let rule =
            format!("add rule inet berth-chaos input numgen random mod 100 < {percent} drop");
        self.exec("nft", &[&rule]).await.map(drop)
    }

    /// Delays what this member sends: netem where the kernel has it, else a
    /// token bucket whose queue holds packets up to `delay_ms`.
    pub async fn delay(&self, delay_ms: u32, netem: bool) -> Result<(), FabricError> {
        let (delay, jitter) = (format!("{delay_ms}ms"), format!("{}ms", delay_ms / 4));
        let latency = format!("{delay_ms}ms");
        let args: Vec<&str> = match netem {
            true => vec![
                "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay, &jitter,
            ],
            false => vec![
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "256kbit", "burst",
                "2kb", "latency", &latency,
            ],
        };
        self.exec("tc", &args).await.map(drop)
    }

    /// Removes every fault of this member.
    pub async fn heal(&self) -> Result<(), FabricError> {
        self.exec("nft", &["flush chain inet berth-chaos input"])
            .await?;
        // Fails when there is no qdisc of ours: nothing to remove.
        let _ = self
            .exec("tc", &["qdisc", "del", "dev", "eth0", "root"])
            .await;
        Ok(())
    }
}

pub struct Fabric {
    prefix: String,
    pub gateway: String,
    pub members: Vec<Member>,
    /// Whether this kernel has `tc netem` (many minimal kernels do not).
    pub netem: bool,
}

/// Namespaces of this program are named `bch<pid>-...`.
const NAME_TAG: &str = "bch";

impl Fabric {
    /// Makes the fabric and `members` member namespaces.
    pub fn create(members: usize) -> Result<Self, FabricError> {
        remove_orphans();
        let prefix = format!("{NAME_TAG}{}", std::process::id());
        let mut fabric = Self {
            gateway: format!("{SUBNET}.1"),
            prefix,
            members: Vec::new(),
            netem: false,
        };
        let fab = fabric.name("fab");
        run("ip", &["netns", "add", &fab])?;
        run("ip", &["-n", &fab, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &fab, "link", "add", "fab0", "type", "bridge"])?;
        run(
            "ip",
            &[
                "-n",
                &fab,
                "addr",
                "add",
                &format!("{}/24", fabric.gateway),
                "dev",
                "fab0",
            ],
        )?;
        run("ip", &["-n", &fab, "link", "set", "fab0", "up"])?;
        for i in 0..members {
            let member = Member {
                netns: fabric.name(&format!("m{i}")),
                ip: format!("{SUBNET}.{}", 10 + i),
            };
            let ns = member.netns.as_str();
            let veth = format!("v{i}");
            run("ip", &["netns", "add", ns])?;
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &veth,
                    "netns", &fab,
                ],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", member.ip),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
            run(
                "ip",
                &["-n", &fab, "link", "set", &veth, "master", "fab0", "up"],
            )?;
            run(
                "ip",
                &["netns", "exec", ns, "nft", "add table inet berth-chaos"],
            )?;
            run("ip", &["netns", "exec", ns, "nft", "add chain inet berth-chaos input { type filter hook input priority -10; policy accept; }"])?;
            fabric.members.push(member);
        }
        fabric.netem = fabric.members.first().is_some_and(|m| {
            let ns = m.netns.as_str();
            let probe = run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "netem",
                    "delay", "1ms",
                ],
            );
            let _ = run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                ],
            );
            probe.is_ok()
        });
        Ok(fabric)
    }

    fn name(&self, part: &str) -> String {
        format!("{}-{part}", self.prefix)
    }

    pub fn fabric_netns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(self.name("fab"))
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let mut names: Vec<String> = self.members.iter().map(|m| m.netns.clone()).collect();
        names.push(self.name("fab"));
        remove_namespaces(&names);
    }
}

/// Kills what still runs in each namespace (the fabric's own holds only
/// this program's threads and is left alone), then deletes it.
fn remove_namespaces(names: &[String]) {
    for name in names {
        if !name.ends_with("-fab") {
            let pids = run("ip", &["netns", "pids", name]).unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// Removes namespaces that an earlier run left behind when it was killed
/// (their name carries its pid, and no such process runs any more).
fn remove_orphans() {
    let listing = run("ip", &["netns", "list"]).unwrap_or_default();
    let orphans: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            let Some(rest) = name.strip_prefix(NAME_TAG) else {
                return false;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            pid.is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists())
        })
        .map(str::to_string)
        .collect();
    remove_namespaces(&orphans);
}
