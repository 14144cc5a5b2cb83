//! Control groups for the process runtime: v1 (a hierarchy per controller,
//! as this machine mounts them) or v2 (one unified tree), detected at
//! start. Berth's groups live under `berth/<node>/<pod uid>/<container>` at
//! the root of each hierarchy: v2 allows processes only in leaves, and its
//! root is the one inner group exempt from that rule.

use std::fs;
use std::io;
use std::path::Path;
use std::path::PathBuf;

/// CFS period: quota is expressed per this many microseconds.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Clone, Debug)]
pub enum Cgroups {
    V1 { cpu: PathBuf, memory: PathBuf },
    V2 { root: PathBuf },
}

/// What a container may use.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

impl Cgroups {
    /// The hierarchies mounted under `mount` (normally /sys/fs/cgroup), if
    /// cpu and memory control is available there and writable.
    pub fn detect(mount: &Path) -> Option<Self> {
        if mount.join("cgroup.controllers").exists() {
            let controllers = fs::read_to_string(mount.join("cgroup.controllers")).ok()?;
            let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
            return (has("cpu") && has("memory")).then(|| Cgroups::V2 {
                root: mount.join("berth"),
            });
        }
        let cpu = [mount.join("cpu"), mount.join("cpu,cpuacct")]
            .into_iter()
            .find(|p| p.join("cpu.shares").exists())?;
        let memory = mount.join("memory");
        memory
            .join("memory.limit_in_bytes")
            .exists()
            .then(|| Cgroups::V1 {
                cpu: cpu.join("berth"),
                memory: memory.join("berth"),
            })
    }

    pub fn version(&self) -> &'static str {
        match self {
            Cgroups::V1 { .. } => "v1",
            Cgroups::V2 { .. } => "v2",
        }
    }

    /// The group's directory in every hierarchy.
    fn dirs(&self, group: &Path) -> Vec<PathBuf> {
        match self {
            Cgroups::V1 { cpu, memory } => vec![memory.join(group), cpu.join(group)],
            Cgroups::V2 { root } => vec![root.join(group)],
        }
    }

    /// Creates `group` with `limits`, replacing the limits of one left over.
    pub fn create(&self, group: &Path, limits: Limits) -> io::Result<()> {
        match self {
            Cgroups::V1 { cpu, memory } => {
                fs::create_dir_all(memory.join(group))?;
                fs::create_dir_all(cpu.join(group))?;
                let mem = memory.join(group);
                let limit = limits.memory_limit_bytes.map_or(-1, |b| b as i64);
                fs::write(mem.join("memory.limit_in_bytes"), limit.to_string())?;
                let cpu = cpu.join(group);
                fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                let quota = limits.cpu_limit_millis.map_or(-1, |m| quota_us(m) as i64);
                fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string())?;
                let shares = limits
                    .cpu_request_millis
                    .map_or(1024, |m| (m * 1024 / 1000).max(2));
                fs::write(cpu.join("cpu.shares"), shares.to_string())?;
            }
            Cgroups::V2 { root } => {
                let dir = root.join(group);
                fs::create_dir_all(&dir)?;
                enable_controllers(root.parent().unwrap_or(root), &dir)?;
                let max = limits
                    .memory_limit_bytes
                    .map_or("max".to_string(), |b| b.to_string());
                fs::write(dir.join("memory.max"), max)?;
                // No swap, so that a limit ends in the OOM killer as with v1.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                let cpu_max = limits.cpu_limit_millis.map_or("max".to_string(), |m| {
                    format!("{} {CPU_PERIOD_US}", quota_us(m))
                });
                fs::write(dir.join("cpu.max"), format!("{cpu_max}\n"))?;
                let weight = limits
                    .cpu_request_millis
                    .map_or(100, |m| (m * 100 / 1000).clamp(1, 10_000));
                fs::write(dir.join("cpu.weight"), weight.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes itself into to join.
    pub fn procs_files(&self, group: &Path) -> Vec<PathBuf> {
        self.dirs(group)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Processes in the group (and, for v1, the memory hierarchy's view).
    pub fn pids(&self, group: &Path) -> Vec<i32> {
        let Some(dir) = self.dirs(group).into_iter().next() else {
            return Vec::new();
        };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many times the kernel's OOM killer acted in the group.
    pub fn oom_kills(&self, group: &Path) -> u64 {
        let (file, dir) = match self {
            Cgroups::V1 { memory, .. } => ("memory.oom_control", memory.join(group)),
            Cgroups::V2 { root } => ("memory.events", root.join(group)),
        };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes `group` and every group below it (all must be empty of
    /// processes). A group that is not there is fine.
    pub fn remove(&self, group: &Path) -> io::Result<()> {
        for dir in self.dirs(group) {
            remove_tree(&dir)?;
        }
        Ok(())
    }
}

fn quota_us(millis: u64) -> u64 {
    (millis * CPU_PERIOD_US / 1000).max(1000)
}

/// v2 hands a controller to a group only if every ancestor enables it for
/// its children.
fn enable_controllers(mount: &Path, leaf: &Path) -> io::Result<()> {
    let mut ancestors: Vec<&Path> = leaf.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors.into_iter().filter(|a| a.starts_with(mount)) {
        let control = dir.join("cgroup.subtree_control");
        let current = fs::read_to_string(&control).unwrap_or_default();
        for c in ["cpu", "memory"] {
            if !current.split_whitespace().any(|x| x == c) {
                fs::write(&control, format!("+{c}"))?;
            }
        }
    }
    Ok(())
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
