//! The run's network: testkit's fabric (a namespace holding a bridge, and
//! a namespace per member, controller or agent process, linked to it by a
//! veth pair), so that a partition is real packet loss. Faults are
//! nftables rules in a member's own table (`inet berth-chaos`) and traffic
//! shaping on its link.

use berth_testkit::netns;
pub use berth_testkit::netns::CommandError;
pub use berth_testkit::netns::Member;

/// The fabric's subnet: private, and reachable only inside the namespaces.
pub const SUBNET: &str = "10.253.0";

/// Namespaces of this program are named `bch<pid>x<n>-...`.
const NAME_TAG: &str = "bch";

/// The faults a member's network can be given.
pub trait Faults {
    fn drop_from(
        &self,
        peers: &[&Member],
    ) -> impl std::future::Future<Output = Result<(), CommandError>> + Send;
    fn lose(
        &self,
        percent: u32,
    ) -> impl std::future::Future<Output = Result<(), CommandError>> + Send;
    fn delay(
        &self,
        delay_ms: u32,
        netem: bool,
    ) -> impl std::future::Future<Output = Result<(), CommandError>> + Send;
    fn heal(&self) -> impl std::future::Future<Output = Result<(), CommandError>> + Send;
}

impl Faults for Member {
    /// Drops every packet arriving from `peers`.
    async fn drop_from(&self, peers: &[&Member]) -> Result<(), CommandError> {
        for peer in peers {
            let rule = format!("add rule inet berth-chaos input ip saddr {} drop", peer.ip);
            self.exec_async("nft", &[&rule]).await?;
        }
        Ok(())
    }

    /// Drops `percent` of the packets arriving from anywhere.
    async fn lose(&self, percent: u32) -> Result<(), CommandError> {
        let rule =
            format!("add rule inet berth-chaos input numgen random mod 100 < {percent} drop");
        self.exec_async("nft", &[&rule]).await.map(drop)
    }

    /// Delays what this member sends: netem where the kernel has it, else a
    /// token bucket whose queue holds packets up to `delay_ms`.
    async fn delay(&self, delay_ms: u32, netem: bool) -> Result<(), CommandError> {
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
        self.exec_async("tc", &args).await.map(drop)
    }

    /// Removes every fault of this member.
    async fn heal(&self) -> Result<(), CommandError> {
        self.exec_async("nft", &["flush chain inet berth-chaos input"])
            .await?;
        // Fails when there is no qdisc of ours: nothing to remove.
        let _ = self
            .exec_async("tc", &["qdisc", "del", "dev", "eth0", "root"])
            .await;
        Ok(())
    }
}

pub struct Fabric {
    pub net: netns::Fabric,
    /// Whether this kernel has `tc netem` (many minimal kernels do not).
    pub netem: bool,
}

impl Fabric {
    /// Makes the fabric and `members` member namespaces, each with an
    /// empty input chain for faults.
    pub fn create(members: usize) -> Result<Self, CommandError> {
        let net = netns::Fabric::create(NAME_TAG, SUBNET, members)?;
        for m in &net.members {
            m.exec("nft", &["add table inet berth-chaos"])?;
            m.exec("nft", &["add chain inet berth-chaos input { type filter hook input priority -10; policy accept; }"])?;
        }
        let netem = net.members.first().is_some_and(|m| {
            let probe = m.exec(
                "tc",
                &[
                    "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", "1ms",
                ],
            );
            let _ = m.exec("tc", &["qdisc", "del", "dev", "eth0", "root"]);
            probe.is_ok()
        });
        Ok(Self { net, netem })
    }
}
