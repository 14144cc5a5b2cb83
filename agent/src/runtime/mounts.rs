//! The process runtime's view of the file system for one container, made
//! by its shim before the container starts. The container runs on the
//! node's own root, in a mount namespace of its own where the pod's
//! volumes are bound at their paths (and the pod's resolv.conf over the
//! node's). Nothing done here reaches the node's namespace.
//!
//! A mount path need not exist on the node: Berth must not make `/data`
//! on the node for a pod that mounts there. The deepest directory that
//! does exist is *shadowed* instead: a tmpfs takes its place in this
//! namespace, holding a bind of every entry the directory had, and the
//! missing directories are made on the tmpfs. Shadowing `/` makes a new
//! root and pivots to it, so that a process that joins the namespace later
//! (an exec probe, `berth exec`) sees the same paths.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;

use nix::mount::MntFlags;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::Mount;
use super::SandboxNetwork;

/// Where the old root is put while pivoting, inside the new one.
const OLD_ROOT: &str = ".berth-old-root";
/// The scratch directory once the root is a tmpfs of our own.
const ROOT_SCRATCH: &str = "/.berth-scratch";

/// Enters the pod's network and a mount namespace of the container's own
/// with `mounts` in place. `scratch` is an empty directory of the node the
/// shim may mount on. Single-threaded callers only (setns and unshare).
pub fn enter(network: Option<&SandboxNetwork>, mounts: &[Mount], scratch: &Path) -> io::Result<()> {
    if let Some(net) = network {
        let ns = fs::File::open(&net.netns)?;
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
    }
    if network.is_none() && mounts.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    // Mounts made here must not reach the node's namespace.
    mount(None, Path::new("/"), MsFlags::MS_REC | MsFlags::MS_SLAVE)?;
    if let Some(net) = network {
        mount(
            Some(&net.resolv_conf),
            Path::new("/etc/resolv.conf"),
            MsFlags::MS_BIND,
        )?;
    }
    let mut view = View {
        scratch: scratch.to_path_buf(),
        ours: Vec::new(),
    };
    let mut ordered: Vec<&Mount> = mounts.iter().collect();
    ordered.sort_by_key(|m| m.target.components().count());
    if ordered
        .iter()
        .any(|m| existing_ancestor(&m.target) == Path::new("/"))
    {
        view.shadow(Path::new("/"))?;
    }
    for m in ordered {
        view.bind(m).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot mount {} at {}: {e}",
                    m.source.display(),
                    m.target.display()
                ),
            )
        })?;
    }
    if view.ours.iter().any(|p| p == Path::new("/")) {
        fs::remove_dir(ROOT_SCRATCH)?;
    }
    Ok(())
}

fn mount(source: Option<&Path>, target: &Path, flags: MsFlags) -> io::Result<()> {
    nix::mount::mount(source, target, None::<&str>, flags, None::<&str>).map_err(io::Error::from)
}

/// The deepest ancestor of `path` that exists (`/` at worst).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"))
}

struct View {
    scratch: PathBuf,
    /// Directories on tmpfs of our own (shadows and what was made in
    /// them), where new entries may be made.
    ours: Vec<PathBuf>,
}

impl View {
    fn bind(&mut self, m: &Mount) -> io::Result<()> {
        let is_dir = fs::metadata(&m.source)?.is_dir();
        self.make_point(&m.target, is_dir)?;
        mount(
            Some(&m.source),
            &m.target,
            MsFlags::MS_BIND | MsFlags::MS_REC,
        )?;
        if m.read_only {
            let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
            mount(None, &m.target, ro)?;
        }
        Ok(())
    }

    /// Makes `target` exist as a directory (or a file), shadowing its
    /// deepest existing ancestor if that is the node's.
    fn make_point(&mut self, target: &Path, is_dir: bool) -> io::Result<()> {
        if let Ok(meta) = fs::metadata(target) {
            return match (meta.is_dir(), is_dir) {
                (true, false) => Err(io::Error::other(
                    "the path is a directory and the volume's source is a file",
                )),
                (false, true) => Err(io::Error::other(
                    "the path is a file and the volume's source is a directory",
                )),
                _ => Ok(()),
            };
        }
        let ancestor = existing_ancestor(target).to_path_buf();
        if !self.ours.contains(&ancestor) {
            self.shadow(&ancestor)?;
        }
        let missing: Vec<&Path> = target.ancestors().take_while(|a| *a != ancestor).collect();
        for (i, dir) in missing.iter().rev().enumerate() {
            let last = i + 1 == missing.len();
            if last && !is_dir {
                fs::File::create(dir)?;
            } else {
                fs::create_dir(dir)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
                self.ours.push(dir.to_path_buf());
            }
        }
        Ok(())
    }

    /// Puts a tmpfs holding binds of `dir`'s entries in place of `dir`.
    fn shadow(&mut self, dir: &Path) -> io::Result<()> {
        let meta = fs::metadata(dir)?;
        let options = format!("mode={:o}", meta.permissions().mode() & 0o7777);
        nix::mount::mount(
            Some("tmpfs"),
            &self.scratch,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        )?;
        std::os::unix::fs::chown(&self.scratch, Some(meta.uid()), Some(meta.gid()))?;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let copy = self.scratch.join(entry.file_name());
            let kind = entry.file_type()?;
            if kind.is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(entry.path())?, &copy)?;
            } else if kind.is_dir() {
                fs::create_dir(&copy)?;
                mount(
                    Some(&entry.path()),
                    &copy,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                )?;
            } else {
                fs::File::create(&copy)?;
                mount(Some(&entry.path()), &copy, MsFlags::MS_BIND)?;
            }
        }
        if dir == Path::new("/") {
            let old = self.scratch.join(OLD_ROOT);
            fs::create_dir(&old)?;
            nix::unistd::pivot_root(&self.scratch, &old)?;
            std::env::set_current_dir("/")?;
            let old = Path::new("/").join(OLD_ROOT);
            nix::mount::umount2(&old, MntFlags::MNT_DETACH)?;
            fs::remove_dir(&old)?;
            fs::create_dir(ROOT_SCRATCH)?;
            self.scratch = PathBuf::from(ROOT_SCRATCH);
        } else {
            mount(Some(&self.scratch), dir, MsFlags::MS_MOVE)?;
        }
        self.ours.push(dir.to_path_buf());
        Ok(())
    }
}
