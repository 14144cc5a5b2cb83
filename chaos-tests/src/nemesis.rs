//! Faults, drawn at random from the run's seed, one at a time: each is
//! held for a while, then everything is healed (paused processes
//! continued, killed ones restarted, firewall rules and shaping removed)
//! and the window is recorded.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;

use crate::fabric::Faults;
use crate::fabric::Member;
use crate::history::FaultWindow;
use crate::history::Recorder;
use crate::procs::Proc;

/// The port every controller listens on, in its own namespace.
pub const API_PORT: u16 = 7000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// SIGKILL a controller (the leader more often), restart it after.
    Kill,
    /// SIGSTOP a controller, SIGCONT after.
    Pause,
    /// Partitions between controllers: the leader isolated, a majority
    /// and a minority, a bridge, one-way loss.
    Partition,
    /// Packet loss and delay on controllers' links.
    Netem,
    /// An agent process killed and restarted, or its nodes cut off long
    /// enough to be evicted.
    Agent,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Netem => "netem",
            FaultKind::Agent => "agent",
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "kill" => FaultKind::Kill,
            "pause" => FaultKind::Pause,
            "partition" => FaultKind::Partition,
            "netem" => FaultKind::Netem,
            "agent" => FaultKind::Agent,
            other => {
                return Err(format!(
                    "unknown fault {other:?}: choose from kill, pause, partition, netem, agent"
                ))
            }
        })
    }
}

/// The processes of the run.
pub struct Cluster {
    /// The controllers' data dirs, for their credentials.
    pub controller_dirs: Vec<std::path::PathBuf>,
    pub controllers: Vec<Proc>,
    pub agents: Vec<Proc>,
    /// Whether `tc netem` works here (else delay is a token bucket's queue).
    pub netem: bool,
}

impl Cluster {
    pub fn addr(member: &Member) -> String {
        format!("{}:{API_PORT}", member.ip)
    }

    fn credentials_dir(&self) -> Option<&std::path::Path> {
        berth_testkit::tls::written(self.controller_dirs.iter().map(|d| d.as_path()))
    }

    /// A cluster administrator's transport, once a controller wrote its
    /// credentials.
    pub fn admin(&self) -> Option<berth_client::Transport> {
        berth_testkit::tls::admin_transport(self.credentials_dir()?).ok()
    }

    /// A controller's transport, for the raw KV store.
    pub fn controller_transport(&self) -> Option<berth_client::Transport> {
        berth_testkit::tls::controller_transport(self.credentials_dir()?).ok()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.controllers
            .iter()
            .map(|c| Self::addr(&c.member))
            .collect()
    }

    /// The index of the controller that the reachable ones call leader,
    /// if a majority of them agree.
    pub async fn leader(&self) -> Option<usize> {
        let mut votes = std::collections::BTreeMap::<u64, usize>::new();
        let transport = self.admin()?;
        for c in self
            .controllers
            .iter()
            .filter(|c| c.is_running() && !c.is_paused())
        {
            if let Some(leader) = status_leader(&transport, &Self::addr(&c.member)).await {
                *votes.entry(leader).or_default() += 1;
            }
        }
        let (leader, count) = votes.into_iter().max_by_key(|(_, n)| *n)?;
        (count * 2 > self.controllers.len()).then(|| leader as usize - 1)
    }

    /// Undoes every fault.
    pub async fn heal(&mut self) -> Result<(), String> {
        for p in self.controllers.iter_mut().chain(self.agents.iter_mut()) {
            if p.is_paused() {
                p.resume();
            }
            p.member.heal().await.map_err(|e| e.to_string())?;
            if !p.is_running() {
                p.start().map_err(|e| format!("restart {}: {e}", p.name))?;
            }
        }
        Ok(())
    }

    /// Stops every process.
    pub async fn stop(&mut self) {
        for p in self.agents.iter_mut().chain(self.controllers.iter_mut()) {
            p.kill();
        }
    }
}

async fn status_leader(transport: &berth_client::Transport, addr: &str) -> Option<u64> {
    let (_, mut client) = berth_client::connect::cluster(&[addr.to_string()], transport)
        .await
        .ok()?;
    let mut req = tonic::Request::new(berth_proto::cluster::StatusRequest {});
    req.set_timeout(Duration::from_millis(500));
    client.status(req).await.ok()?.into_inner().leader
}

pub struct Nemesis {
    pub kinds: Vec<FaultKind>,
    pub seed: u64,
    /// How long a node must be cut off to be evicted.
    pub eviction_hold: Duration,
}

impl Nemesis {
    /// Injects faults until `until`, then heals.
    pub async fn run(
        &self,
        cluster: &mut Cluster,
        recorder: &Arc<Recorder>,
        until: Instant,
    ) -> Result<(), String> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        if self.kinds.is_empty() {
            tokio::time::sleep_until(until.into()).await;
            return Ok(());
        }
        // Kinds are drawn from a shuffled bag, refilled when empty, so that
        // a run with as many faults as kinds has every kind.
        let mut bag: Vec<FaultKind> = Vec::new();
        loop {
            let quiet = Duration::from_millis(rng.random_range(1000..3000));
            if Instant::now() + quiet >= until {
                break;
            }
            tokio::time::sleep(quiet).await;
            if bag.is_empty() {
                bag = self.kinds.clone();
                bag.shuffle(&mut rng);
            }
            let kind = bag.pop().expect("a refilled bag");
            let start_ms = recorder.now_ms();
            let (detail, hold) = self.inject(kind, cluster, &mut rng).await?;
            tracing::info!(fault = kind.name(), %detail, hold_ms = hold.as_millis() as u64, "fault");
            tokio::time::sleep(hold.min(until.saturating_duration_since(Instant::now()))).await;
            cluster.heal().await?;
            recorder.fault(FaultWindow {
                kind: kind.name().into(),
                detail,
                start_ms,
                end_ms: recorder.now_ms(),
            });
        }
        cluster.heal().await
    }

    async fn inject(
        &self,
        kind: FaultKind,
        cluster: &mut Cluster,
        rng: &mut StdRng,
    ) -> Result<(String, Duration), String> {
        let n = cluster.controllers.len();
        let leader = cluster.leader().await;
        // The leader more often: its loss is what a cluster must survive.
        let target = match leader {
            Some(l) if rng.random_bool(0.6) => l,
            _ => rng.random_range(0..n),
        };
        let hold =
            |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..hi));
        let role = |i: usize| if Some(i) == leader { " (leader)" } else { "" };
        match kind {
            FaultKind::Kill | FaultKind::Pause => {
                let c = &mut cluster.controllers[target];
                let signal = match kind {
                    FaultKind::Kill => {
                        c.kill();
                        "SIGKILL"
                    }
                    _ => {
                        c.pause();
                        "SIGSTOP"
                    }
                };
                let detail = format!("{signal} {}{}", c.name, role(target));
                Ok((detail, hold(rng, 1000, 5000)))
            }
            FaultKind::Partition => {
                let detail = self.partition(cluster, rng, leader).await?;
                Ok((detail, hold(rng, 3000, 8000)))
            }
            FaultKind::Netem => {
                let detail = self.shape(cluster, rng).await?;
                Ok((detail, hold(rng, 3000, 8000)))
            }
            FaultKind::Agent => self.agent_fault(cluster, rng).await,
        }
    }

    async fn partition(
        &self,
        cluster: &Cluster,
        rng: &mut StdRng,
        leader: Option<usize>,
    ) -> Result<String, String> {
        let n = cluster.controllers.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let names = |group: &[usize]| {
            let names: Vec<&str> = group
                .iter()
                .map(|i| cluster.controllers[*i].name.as_str())
                .collect();
            format!("{{{}}}", names.join(","))
        };
        let (a, b, both_ways, shape) = match rng.random_range(0..4) {
            0 => {
                let l = leader.unwrap_or(order[0]);
                let rest: Vec<usize> = (0..n).filter(|i| *i != l).collect();
                (vec![l], rest, true, "isolate leader")
            }
            1 => {
                let minority = order[..(n - 1) / 2].to_vec();
                (
                    minority,
                    order[(n - 1) / 2..].to_vec(),
                    true,
                    "majority/minority",
                )
            }
            2 => {
                // order[0] sees both sides; the sides do not see each other.
                let rest = &order[1..];
                let half = rest.len() / 2;
                let detail_bridge = cluster.controllers[order[0]].name.clone();
                let (a, b) = (rest[..half].to_vec(), rest[half..].to_vec());
                cut(cluster, &a, &b, true).await?;
                return Ok(format!(
                    "bridge: {} | {} through {detail_bridge}",
                    names(&a),
                    names(&b)
                ));
            }
            _ => {
                let minority = order[..(n - 1) / 2].to_vec();
                (minority, order[(n - 1) / 2..].to_vec(), false, "one-way")
            }
        };
        cut(cluster, &a, &b, both_ways).await?;
        let arrow = if both_ways { "|" } else { "-/->" };
        Ok(format!("{shape}: {} {arrow} {}", names(&a), names(&b)))
    }

    async fn shape(&self, cluster: &Cluster, rng: &mut StdRng) -> Result<String, String> {
        let n = cluster.controllers.len();
        let count = rng.random_range(1..=n);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let loss = rng.random_range(10..40);
        let delay = rng.random_range(50..200);
        let mut parts = Vec::new();
        for i in &order[..count] {
            let c = &cluster.controllers[*i];
            let (lose, slow) = match rng.random_range(0..3) {
                0 => (true, false),
                1 => (false, true),
                _ => (true, true),
            };
            if lose {
                c.member.lose(loss).await.map_err(|e| e.to_string())?;
            }
            if slow {
                c.member
                    .delay(delay, cluster.netem)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let what = match (lose, slow) {
                (true, true) => format!("{loss}% loss, {delay} ms delay"),
                (true, false) => format!("{loss}% loss"),
                _ => format!("{delay} ms delay"),
            };
            parts.push(format!("{}: {what}", c.name));
        }
        let how = if cluster.netem {
            "netem"
        } else {
            "nft loss, tbf delay"
        };
        Ok(format!("{} ({how})", parts.join("; ")))
    }

    async fn agent_fault(
        &self,
        cluster: &mut Cluster,
        rng: &mut StdRng,
    ) -> Result<(String, Duration), String> {
        if cluster.agents.is_empty() {
            return Ok(("no agents".into(), Duration::ZERO));
        }
        let i = rng.random_range(0..cluster.agents.len());
        if rng.random_bool(0.5) {
            cluster.agents[i].kill();
            let hold = Duration::from_millis(rng.random_range(1000..4000));
            return Ok((format!("SIGKILL {}", cluster.agents[i].name), hold));
        }
        let agent = cluster.agents[i].member.clone();
        let controllers: Vec<&Member> = cluster.controllers.iter().map(|c| &c.member).collect();
        agent
            .drop_from(&controllers)
            .await
            .map_err(|e| e.to_string())?;
        for c in &controllers {
            c.drop_from(&[&agent]).await.map_err(|e| e.to_string())?;
        }
        Ok((
            format!(
                "cut off {} until its nodes are evicted",
                cluster.agents[i].name
            ),
            self.eviction_hold,
        ))
    }
}

/// Drops traffic from `b` at `a`, and from `a` at `b` when `both_ways`.
async fn cut(cluster: &Cluster, a: &[usize], b: &[usize], both_ways: bool) -> Result<(), String> {
    let members = |group: &[usize]| -> Vec<Member> {
        group
            .iter()
            .map(|i| cluster.controllers[*i].member.clone())
            .collect()
    };
    let (ma, mb) = (members(a), members(b));
    for x in &mb {
        x.drop_from(&ma.iter().collect::<Vec<_>>())
            .await
            .map_err(|e| e.to_string())?;
    }
    if both_ways {
        for x in &ma {
            x.drop_from(&mb.iter().collect::<Vec<_>>())
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
