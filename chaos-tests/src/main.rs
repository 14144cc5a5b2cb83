//! `berth-chaos`: one chaos run against the real `berth` binary. Exits 0
//! only if every checker passed, 1 if one failed or could not decide, 2 if
//! the run itself could not be carried out.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use berth_chaos::fabric::Fabric;
use berth_chaos::nemesis::FaultKind;
use berth_chaos::run::Config;
use berth_chaos::run::Runtime;
use clap::Parser;

/// Break a Berth cluster on purpose and check that nothing is lost or doubled.
#[derive(Parser)]
#[command(name = "berth-chaos", version)]
struct Args {
    /// How long clients and faults run (healing and checks come after).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Seeds the fault schedule and the clients' choices (default: random,
    /// printed so that a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Controllers: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=7))]
    controllers: u8,
    /// Faults to inject, from kill, pause, partition, netem, agent; `none`
    /// for a run without faults.
    #[arg(long, default_value = "kill,pause,partition,netem,agent")]
    faults: String,
    /// Agent processes (the sim runtime runs two nodes in each).
    #[arg(long, default_value_t = 2)]
    agents: usize,
    #[arg(long, value_enum, default_value = "sim")]
    runtime: Runtime,
    /// Registers (ConfigMaps) the clients read, write and cas.
    #[arg(long, default_value_t = 4)]
    registers: usize,
    /// Where to write history.jsonl, verdicts.json, timeline.svg and the
    /// processes' logs.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start the controllers with `--unsafe-stale-reads` (reads without
    /// read-index): the linearizability checker should then fail.
    #[arg(long)]
    unsafe_stale_reads: bool,
    /// The `berth` binary (default: next to this one, else on PATH).
    #[arg(long)]
    berth: Option<PathBuf>,
    /// How long the linearizability search may take before it reports
    /// "unknown".
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    check_budget: Duration,
}

fn faults(list: &str) -> Result<Vec<FaultKind>, String> {
    if list.trim() == "none" {
        return Ok(Vec::new());
    }
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

fn berth_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return path
            .is_file()
            .then_some(path.clone())
            .ok_or(format!("--berth {}: no such file", path.display()));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.join("berth")));
    if let Some(path) = beside.filter(|p| p.is_file()) {
        return Ok(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("berth")).find(|p| p.is_file()))
        .ok_or("no berth binary beside berth-chaos or on PATH: build it (cargo build --release) or pass --berth".into())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("berth-chaos: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("berth-chaos needs root: it builds network namespaces and firewall rules");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let work = tempfile::Builder::new().prefix("berth-chaos-").tempdir()?;
    let work_dir = match &args.out {
        Some(out) => {
            std::fs::create_dir_all(out)?;
            out.clone()
        }
        None => work.path().to_path_buf(),
    };
    let cfg = Config {
        berth: berth_binary(args.berth).map_err(anyhow::Error::msg)?,
        duration: args.duration,
        seed,
        controllers: args.controllers as usize,
        faults: faults(&args.faults).map_err(anyhow::Error::msg)?,
        agents: args.agents,
        runtime: args.runtime,
        registers: args.registers.max(1),
        unsafe_stale_reads: args.unsafe_stale_reads,
        check_budget: args.check_budget,
        work_dir: work_dir.clone(),
    };
    eprintln!("berth-chaos: seed {seed} (repeat with --seed {seed})");
    let fabric = Fabric::create(cfg.controllers + cfg.agents)?;
    // Threads made inside share the fabric's network: the clients reach
    // every member, and nothing of the run touches the host's.
    let outcome = fabric.net.run_inside(|| -> anyhow::Result<_> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()?;
        // On Ctrl-C or SIGTERM the run is dropped: its processes are
        // killed and the fabric removed below.
        let result = rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                result = berth_chaos::run::run(&cfg, &fabric) => Ok(result?),
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                _ = term.recv() => Err(anyhow::anyhow!("terminated")),
            }
        });
        rt.shutdown_timeout(Duration::from_secs(5));
        result
    });
    let outcome = outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("the run panicked")));
    drop(fabric);
    let (report, ops, faults) = outcome?;
    print!("{}", report.table());
    if let Some(out) = &args.out {
        report.write(out, &ops, &faults)?;
        println!("history, verdicts, timeline and logs: {}", out.display());
    }
    // Controllers' data goes; logs stay only under --out.
    for entry in std::fs::read_dir(&work_dir)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("controller-") || name.starts_with("agent-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(report.passed())
}
