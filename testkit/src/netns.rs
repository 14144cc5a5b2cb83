//! Network namespaces for tests that must not touch the host's network: a
//! fabric namespace holding a bridge (the "switch", at SUBNET.1) and member
//! namespaces linked to it by veth pairs (SUBNET.10, .11, ...). A test's
//! traffic stays inside them. Everything is made under one name prefix
//! that carries this process's pid and is removed on drop, also after a
//! failure, together with what earlier runs left when they were killed.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use nix::sys::signal::kill;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("cannot run `{command}`: {source} (install iproute2, nftables and util-linux)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
}

/// Runs a command to completion; its stdout, or what it said on failure.
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `run` off the async workers.
pub async fn run_async(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let program = program.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&program, &args)
    })
    .await
    .expect("a command's task")
}

/// The path `ip netns` gives namespace `name`.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// A member's namespace and its address on the fabric.
#[derive(Clone, Debug)]
pub struct Member {
    pub netns: String,
    pub ip: String,
}

impl Member {
    pub fn netns_path(&self) -> PathBuf {
        path(&self.netns)
    }

    /// Runs `program args` inside this member's namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, CommandError> {
        run("ip", &exec_args(&self.netns, program, args))
    }

    /// `exec` off the async workers.
    pub async fn exec_async(&self, program: &str, args: &[&str]) -> Result<String, CommandError> {
        run_async("ip", &exec_args(&self.netns, program, args)).await
    }
}

fn exec_args<'a>(netns: &'a str, program: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    all
}

pub struct Fabric {
    prefix: String,
    /// The bridge's address in the fabric namespace.
    pub gateway: String,
    pub members: Vec<Member>,
}

/// Fabrics made by this process so far (tests make several at once).
static MADE: AtomicUsize = AtomicUsize::new(0);

impl Fabric {
    /// Makes a fabric of `members` members on `subnet` (three octets: a
    /// private /24 that nothing else on this machine uses), its namespaces
    /// named `TAG<pid>x<n>-fab` and `...-m0`, `...-m1`, ...
    pub fn create(tag: &str, subnet: &str, members: usize) -> Result<Self, CommandError> {
        remove_orphans(tag);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let mut fabric = Self {
            prefix: format!("{tag}{}x{n}", std::process::id()),
            gateway: format!("{subnet}.1"),
            members: Vec::new(),
        };
        let fab = fabric.name("fab");
        run("ip", &["netns", "add", &fab])?;
        let ip = |args: &[&str]| run("ip", args).map(drop);
        ip(&["-n", &fab, "link", "set", "lo", "up"])?;
        ip(&["-n", &fab, "link", "add", "fab0", "type", "bridge"])?;
        let gateway = format!("{}/24", fabric.gateway);
        ip(&["-n", &fab, "addr", "add", &gateway, "dev", "fab0"])?;
        ip(&["-n", &fab, "link", "set", "fab0", "up"])?;
        for i in 0..members {
            let member = Member {
                netns: fabric.name(&format!("m{i}")),
                ip: format!("{subnet}.{}", 10 + i),
            };
            let (ns, veth) = (member.netns.as_str(), format!("v{i}"));
            ip(&["netns", "add", ns])?;
            // Pushed before it is wired, so that a failure below still
            // removes it.
            fabric.members.push(member.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &veth, "netns",
                &fab,
            ])?;
            let addr = format!("{}/24", member.ip);
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &fab, "link", "set", &veth, "master", "fab0", "up"])?;
        }
        Ok(fabric)
    }

    fn name(&self, part: &str) -> String {
        format!("{}-{part}", self.prefix)
    }

    /// The fabric namespace, where the bridge's address is.
    pub fn netns_path(&self) -> PathBuf {
        path(&self.name("fab"))
    }

    /// Runs `f` on a thread inside the fabric namespace (setns moves only
    /// the calling thread; the threads and processes it makes inherit the
    /// namespace, so servers it starts listen there and clients it makes
    /// reach every member). Err holds `f`'s panic.
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::thread::Result<T> {
        let ns = self.netns_path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&ns).expect("open the fabric namespace");
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter the fabric namespace");
                f()
            })
            .join()
        })
    }

    /// Runs a test's future to its end on a runtime inside the fabric
    /// namespace; a panic in it goes on in the caller once the fabric's
    /// threads are done.
    pub fn block_on<Fut: std::future::Future>(
        &self,
        test: impl FnOnce() -> Fut + Send,
    ) -> Fut::Output
    where
        Fut::Output: Send,
    {
        let outcome = self.run_inside(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(test())
        });
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        let mut names: Vec<String> = self.members.iter().map(|m| m.netns.clone()).collect();
        names.push(self.name("fab"));
        remove_namespaces(&names);
    }
}

/// Kills what still runs in each member namespace (the fabric's own holds
/// only threads of this program and is left alone), then deletes it.
fn remove_namespaces(names: &[String]) {
    for name in names {
        if !name.ends_with("-fab") {
            let pids = run("ip", &["netns", "pids", name]).unwrap_or_default();
            for pid in pids.split_whitespace().filter_map(|p| p.parse().ok()) {
                let pid = Pid::from_raw(pid);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let _ = run("ip", &["netns", "del", name]);
    }
}

/// The pid in a fabric namespace's name `TAG<pid>x<n>-part`.
fn owner_pid(tag: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(tag)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    rest[digits.len()..].starts_with('x').then_some(())?;
    digits.parse().ok()
}

/// Removes namespaces that an earlier run of `tag` left behind when it was
/// killed (no process of the pid in their name runs any more).
fn remove_orphans(tag: &str) {
    let listing = run("ip", &["netns", "list"]).unwrap_or_default();
    let orphans: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            owner_pid(tag, name).is_some_and(|p| !PathBuf::from(format!("/proc/{p}")).exists())
        })
        .map(str::to_string)
        .collect();
    remove_namespaces(&orphans);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_of_the_tag_name_their_owner() {
        assert_eq!(owner_pid("bch", "bch123x0-fab"), Some(123));
        assert_eq!(owner_pid("bch", "bch123x4-m2"), Some(123));
        assert_eq!(owner_pid("bch", "bch123-m2"), None);
        assert_eq!(owner_pid("bt", "bch123x0-fab"), None);
        assert_eq!(owner_pid("bt", "btx0-fab"), None);
    }
}
