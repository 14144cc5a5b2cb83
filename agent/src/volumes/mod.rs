//! A pod's volumes on this node: made before its containers start,
//! refreshed while it runs, removed with it. Each volume but a hostPath is
//! a directory `<root>/<pod uid>/<volume>`; the runtimes mount it into the
//! containers at their `volumeMounts` (see `runtime::Mount`).
//!
//! - emptyDir: an empty directory (mode 0777, as the kubelet's), or with
//!   `medium: Memory` a tmpfs of `sizeLimit`; over its `sizeLimit` the pod
//!   is evicted (`over_limit`).
//! - configMap, downwardAPI: files on the node's disk; secret, projected:
//!   files on a tmpfs, so that a Secret's bytes never reach the disk. Their
//!   files are written by `atomic`, and rewritten by `set_up` whenever the
//!   ConfigMap, Secret or pod changed: the sync loop calls it on a period.
//! - hostPath: the node's own path, checked (or made) as its `type` says.
//!
//! A volume that cannot be made (its ConfigMap missing, a hostPath of the
//! wrong type) keeps the pod's containers waiting in ContainerCreating
//! with the kubelet's FailedMount message, and is retried.

pub mod atomic;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use berth_api::env::ResourceField;
use berth_api::pb;
use berth_api::quantity::Quantity;
use berth_api::volumes::MetaField;
use berth_api::volumes::Source;
use berth_api::volumes::DEFAULT_MODE;
use berth_api::Object;

use crate::pods::env::Objects;
use crate::pods::env::Source as Kind;
use crate::runtime::Mount;
use atomic::Payload;

/// The waiting reason of containers whose volumes are not ready, as
/// kubectl shows it.
pub const NOT_MOUNTED: &str = "ContainerCreating";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// The kubelet's FailedMount message.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
    SetUp { volume: String, message: String },
    #[error("volume {volume:?} cannot be mounted at {path}: {message}")]
    Mount {
        volume: String,
        path: String,
        message: String,
    },
}

pub struct Volumes {
    root: PathBuf,
    objects: Arc<dyn Objects>,
    /// The node's allocatable resources: a limit not set, in a file.
    allocatable: BTreeMap<String, String>,
    /// One set-up of a pod at a time (its containers start together).
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Where a volume's files are kept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Medium {
    Disk,
    Memory,
}

impl Volumes {
    pub fn new(
        root: PathBuf,
        objects: Arc<dyn Objects>,
        allocatable: BTreeMap<String, String>,
    ) -> Self {
        Self {
            root,
            objects,
            allocatable,
            locks: Default::default(),
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(crate::runtime::process::safe(uid))
    }

    fn volume_dir(&self, pod: &pb::Pod, volume: &str) -> PathBuf {
        self.pod_dir(&pod_uid(pod)).join(volume)
    }

    /// Uids of the pods that have volumes here (an agent that restarts
    /// removes those of pods deleted while it was away).
    pub fn pods(&self) -> Vec<String> {
        fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn lock(&self, uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().expect("volume locks");
        locks.entry(uid.to_string()).or_default().clone()
    }

    /// Makes every volume of `pod`, or brings its files up to date.
    pub async fn set_up(&self, pod: &pb::Pod) -> Result<(), VolumeError> {
        self.set_up_if(pod, false).await
    }

    /// As `set_up`, for a pod whose volumes were made: one torn down since
    /// (the pod went while a round of upkeep ran) is not made again.
    pub async fn refresh(&self, pod: &pb::Pod) -> Result<(), VolumeError> {
        self.set_up_if(pod, true).await
    }

    async fn set_up_if(&self, pod: &pb::Pod, only_existing: bool) -> Result<(), VolumeError> {
        let Some(spec) = pod.spec.as_ref().filter(|s| !s.volumes.is_empty()) else {
            return Ok(());
        };
        let uid = pod_uid(pod);
        let lock = self.lock(&uid);
        let _held = lock.lock().await;
        if only_existing && !self.pod_dir(&uid).exists() {
            return Ok(());
        }
        for v in &spec.volumes {
            self.set_up_one(pod, v)
                .await
                .map_err(|message| VolumeError::SetUp {
                    volume: v.name.clone(),
                    message,
                })?;
        }
        Ok(())
    }

    async fn set_up_one(&self, pod: &pb::Pod, v: &pb::Volume) -> Result<(), String> {
        let dir = self.volume_dir(pod, &v.name);
        let source = Source::of(v)?;
        let fs_group = berth_api::security_context::fs_group(pod);
        let mut payload = match source {
            Source::HostPath(h) => return host_path(h),
            Source::EmptyDir(e) => {
                let (medium, size) = match e.medium.as_str() {
                    "Memory" => (Medium::Memory, Quantity::parse(&e.size_limit).ok()),
                    _ => (Medium::Disk, None),
                };
                make_dir(&dir, medium, 0o777, size.map(|q| q.units() as u64))?;
                return match fs_group {
                    Some(g) => give_to_group(&dir, g, 0o2777),
                    None => Ok(()),
                };
            }
            Source::ConfigMap(c) => {
                let files = self
                    .files(pod, Kind::ConfigMap, &c.name, c.optional)
                    .await?;
                let mode = c.default_mode;
                key_files(files, &c.items, c.optional, mode, Kind::ConfigMap, &c.name)?
            }
            Source::Secret(s) => {
                let files = self
                    .files(pod, Kind::Secret, &s.secret_name, s.optional)
                    .await?;
                let mode = s.default_mode;
                key_files(
                    files,
                    &s.items,
                    s.optional,
                    mode,
                    Kind::Secret,
                    &s.secret_name,
                )?
            }
            Source::DownwardApi(d) => self.downward_files(pod, &d.items, d.default_mode)?,
            Source::Projected(p) => self.projected_files(pod, p).await?,
        };
        let medium = match source {
            Source::Secret(_) | Source::Projected(_) => Medium::Memory,
            _ => Medium::Disk,
        };
        make_dir(&dir, medium, 0o755, None)?;
        if fs_group.is_some() {
            // Readable by the group, as the kubelet makes them.
            for file in payload.values_mut() {
                file.mode |= 0o440;
            }
        }
        let written = atomic::write(&dir, &payload)
            .map_err(|e| format!("cannot write the volume's files: {e}"))?;
        match fs_group {
            Some(g) if written => give_to_group(&dir, g, 0o2755),
            _ => Ok(()),
        }
    }

    /// A ConfigMap's or Secret's keys as file contents; None when it is
    /// missing and `optional`.
    async fn files(
        &self,
        pod: &pb::Pod,
        kind: Kind,
        name: &str,
        optional: Option<bool>,
    ) -> Result<Option<crate::pods::env::Values>, String> {
        let found = self.objects.files(kind, pod.namespace(), name).await?;
        match found {
            None if optional != Some(true) => Err(format!("{} {name:?} not found", kind.lower())),
            found => Ok(found),
        }
    }

    fn downward_files(
        &self,
        pod: &pb::Pod,
        items: &[pb::DownwardApiVolumeFile],
        default_mode: Option<i32>,
    ) -> Result<Payload, String> {
        let mut payload = Payload::new();
        for item in items {
            let data = match (&item.field_ref, &item.resource_field_ref) {
                (Some(f), _) => MetaField::parse(&f.field_path)?.value(pod),
                (None, Some(r)) => {
                    let field = ResourceField::parse(&r.resource)?;
                    let divisor = field.divisor(&r.divisor)?;
                    let spec = pod.spec.clone().unwrap_or_default();
                    let container = spec
                        .init_containers
                        .iter()
                        .chain(&spec.containers)
                        .find(|c| c.name == r.container_name)
                        .ok_or_else(|| format!("no container {:?}", r.container_name))?;
                    field.value(container, divisor, &self.allocatable)
                }
                (None, None) => return Err(format!("{:?} names no field", item.path)),
            };
            let mode = mode_of(item.mode, default_mode);
            payload.insert(
                item.path.clone(),
                atomic::File {
                    data: data.into_bytes(),
                    mode,
                },
            );
        }
        Ok(payload)
    }

    async fn projected_files(
        &self,
        pod: &pb::Pod,
        p: &pb::ProjectedVolumeSource,
    ) -> Result<Payload, String> {
        let mut payload = Payload::new();
        let mode = p.default_mode;
        for s in &p.sources {
            let part = if let Some(c) = &s.config_map {
                let files = self
                    .files(pod, Kind::ConfigMap, &c.name, c.optional)
                    .await?;
                key_files(files, &c.items, c.optional, mode, Kind::ConfigMap, &c.name)?
            } else if let Some(s) = &s.secret {
                let files = self.files(pod, Kind::Secret, &s.name, s.optional).await?;
                key_files(files, &s.items, s.optional, mode, Kind::Secret, &s.name)?
            } else if let Some(d) = &s.downward_api {
                self.downward_files(pod, &d.items, mode)?
            } else {
                Payload::new()
            };
            payload.extend(part);
        }
        Ok(payload)
    }

    /// Where `container`'s volumes come from on the node, with `env` (its
    /// environment) expanding `subPathExpr`. A sub path that is missing
    /// is made; one that leads out of its volume is refused.
    pub fn mounts(
        &self,
        pod: &pb::Pod,
        container: &pb::Container,
        env: &[(String, String)],
    ) -> Result<Vec<Mount>, VolumeError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut mounts = Vec::with_capacity(container.volume_mounts.len());
        for m in &container.volume_mounts {
            let failed = |message: String| VolumeError::Mount {
                volume: m.name.clone(),
                path: m.mount_path.clone(),
                message,
            };
            let v = spec
                .volumes
                .iter()
                .find(|v| v.name == m.name)
                .ok_or_else(|| failed("the pod has no such volume".into()))?;
            let (base, files) = match Source::of(v).map_err(failed)? {
                Source::HostPath(h) => (PathBuf::from(&h.path), false),
                Source::EmptyDir(_) => (self.volume_dir(pod, &v.name), false),
                _ => (self.volume_dir(pod, &v.name), true),
            };
            let sub = if m.sub_path_expr.is_empty() {
                m.sub_path.clone()
            } else {
                berth_api::env::expand(&m.sub_path_expr, |name| {
                    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
                })
            };
            let source = match sub.as_str() {
                "" => base,
                sub => sub_path(&base, sub).map_err(failed)?,
            };
            mounts.push(Mount {
                source,
                target: PathBuf::from(&m.mount_path),
                // Kubernetes mounts these read-only whatever the mount says.
                read_only: m.read_only || files,
            });
        }
        Ok(mounts)
    }

    /// The eviction message if one of `pod`'s emptyDirs holds more than
    /// its `sizeLimit`. Walks the directories: call it off the sync loop.
    pub fn over_limit(&self, pod: &pb::Pod) -> Option<String> {
        let spec = pod.spec.as_ref()?;
        spec.volumes.iter().find_map(|v| {
            let e = v.empty_dir.as_ref()?;
            let limit = Quantity::parse(&e.size_limit).ok()?;
            let used = disk_usage(&self.volume_dir(pod, &v.name));
            (used > limit.units() as u64).then(|| {
                format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                    v.name, e.size_limit
                )
            })
        })
    }

    /// Removes every volume of the pod `uid` (its containers have ended).
    pub async fn tear_down(&self, uid: &str) -> io::Result<()> {
        let lock = self.lock(uid);
        let _held = lock.lock().await;
        remove_pod(&self.pod_dir(uid))?;
        self.locks.lock().expect("volume locks").remove(uid);
        Ok(())
    }
}

/// Removes the volumes of every pod under `root` (for `berth dev`, whose
/// pods end with it).
pub fn remove_all(root: &Path) {
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        if let Err(e) = remove_pod(&entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a pod's volumes");
        }
    }
}

/// Unmounts the tmpfs volumes in a pod's volume directory, then removes it.
fn remove_pod(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if is_mount_point(&entry.path()) {
            nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH)
                .map_err(io::Error::from)?;
        }
    }
    fs::remove_dir_all(dir)
}

fn pod_uid(pod: &pb::Pod) -> String {
    pod.metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default()
}

fn mode_of(item: Option<i32>, default: Option<i32>) -> u32 {
    item.or(default).map_or(DEFAULT_MODE, |m| m as u32 & 0o777)
}

/// The files of a ConfigMap's or Secret's keys: every key at its own name,
/// or only `items` at their paths.
fn key_files(
    values: Option<crate::pods::env::Values>,
    items: &[pb::KeyToPath],
    optional: Option<bool>,
    default_mode: Option<i32>,
    kind: Kind,
    name: &str,
) -> Result<Payload, String> {
    let values = values.unwrap_or_default();
    let file = |data: &Vec<u8>, mode| atomic::File {
        data: data.clone(),
        mode: mode_of(mode, default_mode),
    };
    if items.is_empty() {
        return Ok(values
            .iter()
            .map(|(k, v)| (k.clone(), file(v, None)))
            .collect());
    }
    let mut payload = Payload::new();
    for item in items {
        match values.get(&item.key) {
            Some(v) => {
                payload.insert(item.path.clone(), file(v, item.mode));
            }
            None if optional == Some(true) => {}
            None => {
                return Err(format!(
                    "{} {name:?} has no key {:?}",
                    kind.lower(),
                    item.key
                ))
            }
        }
    }
    Ok(payload)
}

/// Checks a hostPath as its `type` says, making it where the type says so.
fn host_path(h: &pb::HostPathVolumeSource) -> Result<(), String> {
    let path = Path::new(&h.path);
    let meta = fs::metadata(path);
    let failed = |what: &str| format!("hostPath type check failed: {} is not {what}", h.path);
    match (h.r#type.as_str(), meta) {
        ("", _) => Ok(()),
        ("DirectoryOrCreate", Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", h.path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("cannot set the mode of {}: {e}", h.path))
        }
        ("FileOrCreate", Err(e)) if e.kind() == io::ErrorKind::NotFound => fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| format!("cannot create {}: {e}", h.path)),
        (_, Err(e)) => Err(format!("hostPath {}: {e}", h.path)),
        ("DirectoryOrCreate" | "Directory", Ok(m)) if !m.is_dir() => Err(failed("a directory")),
        ("FileOrCreate" | "File", Ok(m)) if !m.is_file() => Err(failed("a file")),
        ("Socket", Ok(m)) if !m.file_type().is_socket() => Err(failed("a socket file")),
        ("CharDevice", Ok(m)) if !m.file_type().is_char_device() => {
            Err(failed("a character device"))
        }
        ("BlockDevice", Ok(m)) if !m.file_type().is_block_device() => Err(failed("a block device")),
        _ => Ok(()),
    }
}

/// Makes `dir` with `mode`; a Memory one is a tmpfs (of `size` bytes if
/// given) mounted on it, once.
fn make_dir(dir: &Path, medium: Medium, mode: u32, size: Option<u64>) -> Result<(), String> {
    let fresh = !dir.exists();
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if medium == Medium::Memory && !is_mount_point(dir) {
        let mut options = format!("mode={mode:o}");
        if let Some(size) = size {
            options.push_str(&format!(",size={size}"));
        }
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| format!("cannot mount a tmpfs on {}: {e}", dir.display()))?;
    } else if fresh {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Gives `dir` and everything in it to group `gid` (fsGroup); `dir` gets
/// `mode`, the directories in it the setgid bit, so that what is made in
/// them later belongs to the group too.
fn give_to_group(dir: &Path, gid: u32, mode: u32) -> Result<(), String> {
    fn walk(path: &Path, gid: u32) -> io::Result<()> {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
        let meta = fs::symlink_metadata(path)?;
        if meta.is_dir() {
            let bits = meta.permissions().mode() | 0o2010;
            fs::set_permissions(path, fs::Permissions::from_mode(bits))?;
            for entry in fs::read_dir(path)? {
                walk(&entry?.path(), gid)?;
            }
        }
        Ok(())
    }
    walk(dir, gid)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(mode)))
        .map_err(|e| format!("cannot give the volume to group {gid} (fsGroup): {e}"))
}

/// Whether something is mounted on `dir` (it is on another device than
/// its parent).
fn is_mount_point(dir: &Path) -> bool {
    let (Ok(d), Some(Ok(p))) = (
        fs::symlink_metadata(dir),
        dir.parent().map(fs::symlink_metadata),
    ) else {
        return false;
    };
    d.is_dir() && d.dev() != p.dev()
}

/// `base/sub`, made as a directory if missing, resolved; refused if it
/// resolves outside `base` (through a symlink, say).
fn sub_path(base: &Path, sub: &str) -> Result<PathBuf, String> {
    if let Some(why) = berth_api::volumes::sub_path_error(sub) {
        return Err(format!("subPath {sub:?} {why}"));
    }
    let path = base.join(sub);
    if fs::symlink_metadata(&path).is_err() {
        fs::create_dir_all(&path).map_err(|e| format!("cannot create subPath {sub:?}: {e}"))?;
    }
    let real_base = fs::canonicalize(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let real = fs::canonicalize(&path).map_err(|e| format!("subPath {sub:?}: {e}"))?;
    if !real.starts_with(&real_base) {
        return Err(format!("subPath {sub:?} leads out of the volume"));
    }
    Ok(real)
}

/// Bytes `dir` takes on its device, as `du` counts them.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => m.blocks() * 512 + disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests;
