//! Named network namespaces under `/run/netns`, made the way `ip netns add`
//! makes them (so `ip netns` and `nsenter` see the agent's pod namespaces):
//! a thread of our own unshares its network namespace and bind-mounts it
//! onto a file, which keeps the namespace alive after the thread ends. A
//! namespace someone else made (a pause container's) is named the same way.

use std::fs;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::path::PathBuf;

use nix::mount::MntFlags;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;

pub const NETNS_DIR: &str = "/run/netns";
/// `statfs` type of a namespace file (nsfs).
const NSFS_MAGIC: i64 = 0x6e73_6673;

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether `path` holds a network namespace (is a mounted nsfs file).
pub fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

/// `/run/netns`, a shared mount as iproute2 makes it, so that namespace
/// files mounted in it later are seen by every mount namespace.
fn ensure_dir() -> io::Result<()> {
    fs::create_dir_all(NETNS_DIR)?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if nix::mount::mount(None::<&str>, NETNS_DIR, Some("none"), shared, None::<&str>).is_ok() {
        return Ok(());
    }
    nix::mount::mount(
        Some(NETNS_DIR),
        NETNS_DIR,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )?;
    nix::mount::mount(None::<&str>, NETNS_DIR, Some("none"), shared, None::<&str>)?;
    Ok(())
}

/// Creates the namespace `name` unless it exists; returns its path.
pub fn create(name: &str) -> io::Result<PathBuf> {
    let target = path(name);
    if exists(&target) {
        return Ok(target);
    }
    ensure_dir()?;
    File::create(&target)?;
    let mount_point = target.clone();
    // unshare(CLONE_NEWNET) moves only the calling thread: a thread of its
    // own keeps the agent's threads where they are.
    let made = std::thread::spawn(move || -> io::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &mount_point,
            Some("none"),
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = fs::remove_file(&target);
        return Err(e);
    }
    Ok(target)
}

/// Names the namespace at `source` (a `/proc/PID/ns/net` of a process that
/// owns it, such as a pause container) `name`, keeping it alive by a bind
/// mount; a stale namespace of that name is replaced.
pub fn adopt(name: &str, source: &Path) -> io::Result<PathBuf> {
    let target = path(name);
    if exists(&target) {
        if same_file(&target, source)? {
            return Ok(target);
        }
        nix::mount::umount2(&target, MntFlags::MNT_DETACH)?;
    }
    ensure_dir()?;
    File::create(&target)?;
    nix::mount::mount(
        Some(source),
        &target,
        Some("none"),
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    Ok(target)
}

/// Whether two paths are the same namespace (nsfs gives each its inode).
fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (fs::metadata(a)?, fs::metadata(b)?);
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

/// Removes the namespace at `path` (its processes keep it until they end).
pub fn remove(path: &Path) -> io::Result<()> {
    if exists(path) {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs `f` on a thread of its own that has entered the namespace at
/// `path`; sockets it opens belong to that namespace.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::spawn(move || -> io::Result<T> {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}
