//! Berth's test kit: everything the end-to-end tests, `berth-chaos` and
//! `berth bench` need to run real Berth processes and talk to them, in one
//! place, so that a renamed flag or a new required field breaks one file.
//!
//! - [`process`]: one supervisor for every child process (its log file,
//!   its network namespace, SIGSTOP/SIGCONT/SIGKILL, the log's tail when a
//!   test fails).
//! - [`flags`]: typed command lines of `berth server`, `agent`, `scheduler`
//!   and `dev`.
//! - [`cluster`]: controllers on 127.0.0.1 (or a fabric's address), broken
//!   on purpose; [`agent`]: node agents and standalone schedulers that clean
//!   up what their pods left.
//! - [`objects`]: builders of the API objects tests create.
//! - [`netns`]: network namespaces, and a fabric of them joined by a bridge.
//! - [`wait`]: `eventually`, and the lock that runs cluster tests one at a
//!   time.
//! - [`rpc`] and [`images`]: raw KV and status calls; local Docker images.
//!
//! Tests and benchmarks use it; the product's own code never does.

#![forbid(unsafe_code)]

pub mod agent;
pub mod cluster;
pub mod flags;
pub mod images;
pub mod netns;
pub mod objects;
pub mod process;
pub mod rpc;
pub mod tls;
pub mod wait;

pub use agent::Agent;
pub use agent::Scheduler;
pub use cluster::Cluster;
pub use cluster::ClusterOptions;
pub use flags::AgentFlags;
pub use flags::DevFlags;
pub use flags::SchedulerFlags;
pub use flags::ServerFlags;
pub use process::Process;
pub use wait::eventually;
pub use wait::serial;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

/// A free port on 127.0.0.1, below Linux's ephemeral range (32768 and up by
/// default): a port the kernel hands out for binding can be handed out
/// again as the source port of an outgoing connection before the process
/// binds it, and a controller that cannot listen never joins. Checked free
/// by binding, and never handed out twice by this process: a cluster
/// chooses all its ports before its first controller binds one.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// `free_port` on another local address (a fabric's).
pub fn free_port_on(host: &str) -> u16 {
    use rand::Rng;
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        if !handed_out.contains(&port) && TcpListener::bind((host, port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port on {host} between 20000 and 32000")
}

/// The `berth` binary a test runs: the one cargo built beside the running
/// test (tests live in `target/<profile>/deps/`, binaries one level up).
/// `berth bench` passes its own executable instead.
pub fn berth_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let beside = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("berth"));
    match beside {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "no berth binary beside {}: build it first (cargo test builds it for the berth crate's tests)",
            exe.display()
        ),
    }
}

/// A name no earlier run used (for nodes, whose cgroups outlive a killed
/// test).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}
