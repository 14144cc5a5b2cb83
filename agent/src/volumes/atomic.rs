//! Writes a volume's files so that a container sees the old set or the new
//! set, never a mix, as the kubelet's atomic writer does. The files live
//! in a hidden directory named for the moment it was written; `..data` is
//! a symlink to it, and each top-level name the user sees is a symlink
//! through `..data`. An update writes a new hidden directory, then swaps
//! `..data` with one `rename`, then fixes the visible names and removes
//! the old directory. Everything is relative, so it reads the same through
//! a bind mount at any path.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

const DATA_LINK: &str = "..data";
const DATA_LINK_NEW: &str = "..data_tmp";

/// One file to write: its bytes and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path to file.
pub type Payload = BTreeMap<String, File>;

/// Makes `dir` hold exactly `payload`; false when it already did.
pub fn write(dir: &Path, payload: &Payload) -> io::Result<bool> {
    for path in payload.keys() {
        if let Some(why) = berth_api::volumes::local_path_error(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file path {path:?} {why}"),
            ));
        }
    }
    let old = fs::read_link(dir.join(DATA_LINK)).ok();
    if let Some(old) = &old {
        if holds(&dir.join(old), payload) {
            return Ok(false);
        }
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut name = format!("..{}.{:09}", stamp.as_secs(), stamp.subsec_nanos());
    while dir.join(&name).exists() {
        name.push('_');
    }
    let fresh = dir.join(&name);
    fs::create_dir(&fresh)?;
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&target, &file.data)?;
        fs::set_permissions(&target, fs::Permissions::from_mode(file.mode & 0o777))?;
    }
    let staged = dir.join(DATA_LINK_NEW);
    let _ = fs::remove_file(&staged);
    std::os::unix::fs::symlink(&name, &staged)?;
    fs::rename(&staged, dir.join(DATA_LINK))?;
    let visible: BTreeSet<&str> = payload.keys().filter_map(|p| top_level(p)).collect();
    for top in &visible {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(top), &link)?;
        }
    }
    for entry in fs::read_dir(dir)?.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && !entry_name.starts_with("..") && !visible.contains(entry_name.as_str()) {
            fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn top_level(path: &str) -> Option<&str> {
    path.split('/').find(|c| !c.is_empty() && *c != ".")
}

/// Whether `dir` holds exactly the files of `payload` with their modes.
fn holds(dir: &Path, payload: &Payload) -> bool {
    let mut found = BTreeMap::new();
    if collect(dir, dir, &mut found).is_err() {
        return false;
    }
    let normal = |p: &str| Path::new(p).components().collect::<std::path::PathBuf>();
    found.len() == payload.len()
        && payload.iter().all(|(path, file)| {
            found.get(&normal(path)).is_some_and(|(mode, len)| {
                *mode == file.mode & 0o777 && *len == file.data.len() as u64
            }) && fs::read(dir.join(path)).is_ok_and(|d| d == file.data)
        })
}

fn collect(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<std::path::PathBuf, (u32, u64)>,
) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            collect(root, &entry.path(), out)?;
        } else {
            let rel = entry
                .path()
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            out.insert(rel, (meta.permissions().mode() & 0o777, meta.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str, mode: u32) -> File {
        File {
            data: text.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn updates_swap_all_files_at_once_and_drop_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let first: Payload = [
            ("app.conf".to_string(), file("v1", 0o644)),
            ("nested/key".to_string(), file("n1", 0o400)),
        ]
        .into();
        assert!(write(d, &first).unwrap());
        assert!(
            !write(d, &first).unwrap(),
            "the same payload again changes nothing"
        );
        assert_eq!(fs::read_to_string(d.join("app.conf")).unwrap(), "v1");
        assert_eq!(fs::read_to_string(d.join("nested/key")).unwrap(), "n1");
        assert!(fs::symlink_metadata(d.join("app.conf"))
            .unwrap()
            .is_symlink());
        let mode = fs::metadata(d.join("nested/key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let old_data = fs::read_link(d.join(DATA_LINK)).unwrap();

        let second: Payload = [("app.conf".to_string(), file("v2", 0o644))].into();
        assert!(write(d, &second).unwrap());
        assert_eq!(fs::read_to_string(d.join("app.conf")).unwrap(), "v2");
        assert!(
            fs::symlink_metadata(d.join("nested")).is_err(),
            "a key that went is gone"
        );
        assert!(!d.join(old_data).exists(), "the old files are removed");
        let hidden: Vec<String> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".."))
            .collect();
        assert_eq!(
            hidden.len(),
            2,
            "..data and one timestamped dir: {hidden:?}"
        );

        let mode_only: Payload = [("app.conf".to_string(), file("v2", 0o600))].into();
        assert!(write(d, &mode_only).unwrap(), "a mode change is a change");
        assert!(write(d, &Payload::new()).unwrap());
        assert!(fs::symlink_metadata(d.join("app.conf")).is_err());
    }

    #[test]
    fn paths_outside_the_volume_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let escape: Payload = [("../x".to_string(), file("x", 0o644))].into();
        assert!(write(dir.path(), &escape).is_err());
        assert!(!dir.path().join("..data").exists());
    }
}
