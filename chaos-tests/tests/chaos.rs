//! Short chaos runs of the real binaries, as CI runs them: one with every
//! kind of fault that must pass, and one with controllers that answer
//! reads without read-index, in which the linearizability checker must
//! find a violation (a checker that never fails proves nothing).

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

const CHAOS: &str = env!("CARGO_BIN_EXE_berth-chaos");

/// Why this machine cannot run berth-chaos, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (berth-chaos builds network namespaces)".into());
    }
    for tool in ["ip", "nft", "nsenter", "tc"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// The `berth` binary `cargo test` built beside berth-chaos.
fn berth() -> PathBuf {
    let berth = Path::new(CHAOS).with_file_name("berth");
    assert!(
        berth.is_file(),
        "{} is missing: run the workspace's tests (cargo test --release), which build it",
        berth.display()
    );
    berth
}

/// Runs berth-chaos; its exit code and verdicts.json.
fn chaos(args: &[&str]) -> (i32, serde_json::Value) {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(CHAOS)
        .args(args)
        .arg("--berth")
        .arg(berth())
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run berth-chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    eprintln!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
    let verdicts = std::fs::read_to_string(out.path().join("verdicts.json")).unwrap_or_default();
    let verdicts = serde_json::from_str(&verdicts).unwrap_or(serde_json::Value::Null);
    for file in ["history.jsonl", "timeline.svg"] {
        if run.status.code() != Some(2) {
            assert!(out.path().join(file).is_file(), "{file} was not written");
        }
    }
    (run.status.code().unwrap_or(-1), verdicts)
}

fn status(verdicts: &serde_json::Value, checker: &str) -> String {
    verdicts["checkers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["checker"]
                .as_str()
                .is_some_and(|n| n.starts_with(checker))
        })
        .and_then(|c| c["status"].as_str())
        .unwrap_or("missing")
        .to_string()
}

#[test]
fn every_fault_kind_and_every_checker_passes() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    let (code, verdicts) = chaos(&[
        "--duration",
        "45s",
        "--seed",
        "7",
        "--faults",
        "kill,pause,partition,netem,agent",
    ]);
    assert_eq!(code, 0, "a checker failed: {verdicts:#}");
    for checker in ["1 ", "2 ", "3 ", "4 ", "5 ", "6 "] {
        assert_eq!(status(&verdicts, checker), "pass", "checker {checker}");
    }
    for kind in ["kill", "pause", "partition", "netem", "agent"] {
        let injected = verdicts["faults"][kind].as_u64().unwrap_or(0);
        assert!(injected > 0, "no {kind} fault injected: {verdicts:#}");
    }
}

#[test]
fn stale_reads_are_caught_by_the_linearizability_checker() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("skipped: {why}");
        return;
    }
    let (code, verdicts) = chaos(&[
        "--duration",
        "30s",
        "--seed",
        "2",
        "--faults",
        "partition",
        "--unsafe-stale-reads",
    ]);
    assert_eq!(code, 1, "berth-chaos must fail the run: {verdicts:#}");
    assert_eq!(status(&verdicts, "1 "), "fail", "{verdicts:#}");
}
