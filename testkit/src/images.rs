//! Docker images for the docker runtime's tests and benchmarks, made on
//! this machine: there is no registry to pull from.

use std::process::Command;
use std::process::Stdio;

/// Makes sure the Docker Engine has image `tag`: a rootfs of Debian's
/// busybox-static (`/bin/busybox`, with relative applet links), brought in
/// with `docker import`.
pub fn busybox_image(tag: &str) -> Result<(), String> {
    import_busybox(tag, &[])
}

/// A pause image for the docker runtime's pod sandboxes (`--pause-image`):
/// busybox, waiting forever.
pub fn pause_image(tag: &str) -> Result<(), String> {
    import_busybox(tag, &["--change", r#"CMD ["/bin/sleep", "2147483647"]"#])
}

fn docker_succeeds(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `busybox_image`, with `docker import` options (`--change ...`).
fn import_busybox(tag: &str, options: &[&str]) -> Result<(), String> {
    if docker_succeeds(&["image", "inspect", tag]) {
        return Ok(());
    }
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .map_err(|e| format!("copy /bin/busybox (install Debian's busybox-static): {e}"))?;
    let applets = [
        "sh", "sleep", "echo", "cat", "true", "false", "ls", "env", "mktemp", "httpd", "wget",
        "nslookup", "id", "grep", "touch",
    ];
    for applet in applets {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run tar: {e}"))?;
    let imported = Command::new("docker")
        .arg("import")
        .args(options)
        .args(["-", tag])
        .stdin(tar.stdout.take().ok_or("tar has no stdout")?)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("run docker import: {e}"))?;
    let tarred = tar.wait().map_err(|e| e.to_string())?;
    if !(imported.success() && tarred.success()) {
        return Err(format!("docker import of {tag} failed"));
    }
    Ok(())
}

/// Removes every container a docker-runtime agent of node `node` made
/// (they carry the label `berth.node=NODE`), running or not.
pub fn remove_docker_containers(node: &str) {
    let label = format!("label=berth.node={node}");
    let ids = Command::new("docker")
        .args(["ps", "-aq", "--filter", &label])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        docker_succeeds(&args);
    }
}
