//! `berth`: the controller process, and the command-line client.

use std::process::ExitCode;

use clap::Parser;
use clap::Subcommand;

mod agent_cmd;
mod auth_cmd;
mod bench;
mod cluster_cmd;
mod dev_cmd;
mod node_tls;
mod scheduler_cmd;
mod security_cmd;
mod server_cmd;
mod signals;
mod verbs;

use berth::client::parse_addrs;

// glibc's malloc spent a fifth of a loaded controller's CPU in contended
// arenas (perf, `berth bench api`); mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Berth: a container orchestrator with a Raft-replicated control plane"
)]
struct Cli {
    /// Controllers to talk to, comma separated; the client tries them in
    /// turn (default: the credentials' controllers, then $BERTH_SERVER,
    /// then 127.0.0.1:7001).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Credentials file (kubeconfig's shape; default: $BERTH_CONFIG, then
    /// ~/.berth/config).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// The credentials' context to use (default: its current-context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Plain TCP, no certificates: only for a cluster run --insecure
    /// (benchmarks against peers without TLS). Warns at start.
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

/// $BERTH_SERVER, else `berth dev`'s first controller: where a client
/// goes without --server or credentials that list controllers.
pub(crate) fn env_or_default_servers() -> Vec<String> {
    let env = std::env::var("BERTH_SERVER").unwrap_or_default();
    let addrs = parse_addrs(&env);
    if addrs.is_empty() {
        vec!["127.0.0.1:7001".to_string()]
    } else {
        addrs
    }
}

/// The controllers a client command talks to, and how.
fn reach(cli: &Cli) -> anyhow::Result<verbs::Ctx> {
    let flag_addrs = cli.server.as_deref().map(parse_addrs);
    if cli.insecure {
        eprintln!("warning: --insecure: no TLS and no identity; the cluster must run --insecure");
        return Ok(verbs::Ctx {
            addrs: flag_addrs.unwrap_or_else(env_or_default_servers),
            transport: berth_client::Transport::Insecure,
        });
    }
    let path = berth_client::credentials::locate(cli.config.as_deref())
        .ok_or(berth_client::credentials::CredentialsError::Missing)?;
    let loaded = berth_client::credentials::load(&path, cli.context.as_deref())?;
    Ok(verbs::Ctx {
        addrs: flag_addrs.unwrap_or(loaded.servers),
        transport: loaded.transport,
    })
}

#[derive(Subcommand)]
enum Command {
    /// Run a controller.
    Server(server_cmd::ServerArgs),
    /// Run a scheduler on its own (controllers run one each by default).
    Scheduler(scheduler_cmd::SchedulerArgs),
    /// Run a node agent (or, with --runtime sim --count N, many).
    Agent(agent_cmd::AgentArgs),
    /// The process runtime's per-container supervisor (started by the agent).
    #[command(hide = true)]
    AgentShim { dir: std::path::PathBuf },
    /// Run a local cluster in the foreground.
    Dev(dev_cmd::DevArgs),
    /// Inspect and change the controller group.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Join tokens for new controllers and agents.
    #[command(subcommand)]
    Token(security_cmd::TokenCommand),
    /// Users' credentials.
    #[command(subcommand)]
    User(security_cmd::UserCommand),
    /// Ask what RBAC allows.
    #[command(subcommand)]
    Auth(auth_cmd::AuthCommand),
    /// Create or update the objects in manifests (YAML or JSON).
    Apply(verbs::apply::ApplyArgs),
    /// List objects, or show one.
    Get(verbs::get::GetArgs),
    /// Show one object in detail.
    Describe {
        kind: String,
        name: String,
        #[command(flatten)]
        ns: verbs::NamespaceArgs,
    },
    /// Delete objects by name or by manifest.
    Delete(verbs::apply::DeleteArgs),
    /// Set a deployment's replicas.
    Scale(verbs::apply::ScaleArgs),
    /// Stop placing new pods on a node.
    Cordon { node: String },
    /// Place pods on a node again.
    Uncordon { node: String },
    /// Cordon a node and evict its pods.
    Drain { node: String },
    /// Print a container's output (from the agent of its node).
    Logs(verbs::logs::LogsArgs),
    /// Follow a deployment's rollout.
    #[command(subcommand)]
    Rollout(verbs::rollout::RolloutCommand),
    /// Measure the cluster.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// mimalloc asks for transparent huge pages, and the kernel zeroes a whole
/// 2 MiB page on its first touch; with memory returned and taken again
/// under load, that zeroing took 15-18% of all CPU in `berth bench
/// schedule` (5% without). Databases commonly run without THP for the same
/// reason.
fn disable_transparent_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}

/// `berth get pods | head -1` should end quietly when `head` has read
/// enough, as other command-line tools do: Rust ignores SIGPIPE, and a
/// print to a closed pipe would panic. Long-running processes keep
/// ignoring it (a peer closing a socket is no reason to die).
#[allow(unsafe_code)]
fn exit_quietly_on_closed_pipe() {
    use nix::sys::signal::signal;
    use nix::sys::signal::SigHandler;
    use nix::sys::signal::Signal;
    // SAFETY: restores the default action, before any thread is started.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::AgentShim { dir } = &cli.command {
        return agent_cmd::shim(dir);
    }
    if !matches!(
        cli.command,
        Command::Server(_) | Command::Scheduler(_) | Command::Agent(_) | Command::Dev(_)
    ) {
        exit_quietly_on_closed_pipe();
    }
    init_tracing();
    disable_transparent_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let insecure = cli.insecure;
    let server_flag = cli.server.as_deref().map(parse_addrs);
    // Processes bring their own identities; every other command reaches a
    // cluster with credentials (or --insecure), and a benchmark uses them
    // unless it spawns its cluster.
    let target = match cli.command {
        Command::Server(_) | Command::Agent(_) | Command::Dev(_) | Command::AgentShim { .. } => {
            None
        }
        _ => Some(reach(&cli)),
    };
    let ctx = move || target.expect("client commands have a target");
    let result = runtime.block_on(async move {
        let done = match cli.command {
            Command::Auth(cmd) => {
                let allowed = auth_cmd::run(cmd, &ctx()?).await?;
                return Ok(if allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            Command::Server(args) => server_cmd::run(args, insecure).await,
            Command::Scheduler(args) => scheduler_cmd::run(args, &ctx()?).await,
            Command::Agent(args) => agent_cmd::run(args, server_flag, insecure).await,
            Command::AgentShim { .. } => unreachable!("handled before the runtime starts"),
            Command::Dev(args) => dev_cmd::run(args).await,
            Command::Cluster(cmd) => cluster_cmd::run(cmd, &ctx()?).await,
            Command::Token(cmd) => security_cmd::token(cmd, &ctx()?).await,
            Command::User(cmd) => security_cmd::user(cmd, &ctx()?).await,
            Command::Bench(cmd) => bench::run(cmd, ctx(), insecure).await,
            Command::Apply(args) => verbs::apply(&ctx()?, args).await,
            Command::Get(args) => verbs::get(&ctx()?, args).await,
            Command::Describe { kind, name, ns } => {
                verbs::describe(&ctx()?, &kind, &name, &ns).await
            }
            Command::Delete(args) => verbs::delete(&ctx()?, args).await,
            Command::Scale(args) => verbs::scale(&ctx()?, args).await,
            Command::Cordon { node } => verbs::cordon(&ctx()?, &node, true).await,
            Command::Uncordon { node } => verbs::cordon(&ctx()?, &node, false).await,
            Command::Drain { node } => verbs::drain(&ctx()?, &node).await,
            Command::Logs(args) => verbs::logs::run(&ctx()?, args).await,
            Command::Rollout(cmd) => verbs::rollout::run(&ctx()?, cmd).await,
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
