//! The volume manager against a real directory tree, with ConfigMaps and
//! Secrets from a table (the API's part is tested end to end).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::*;
use crate::pods::env::Values;

#[derive(Default)]
struct Table(Mutex<HashMap<(Kind, String), Values>>);

impl Table {
    fn put(&self, kind: Kind, name: &str, pairs: &[(&str, &str)]) {
        let values = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        self.0.lock().unwrap().insert((kind, name.into()), values);
    }
}

#[async_trait]
impl Objects for Table {
    async fn values(&self, kind: Kind, _: &str, name: &str) -> Result<Option<Values>, String> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(&(kind, name.to_string()))
            .cloned())
    }
}

fn pod(volumes: Vec<pb::Volume>) -> pb::Pod {
    pb::Pod {
        metadata: Some(pb::ObjectMeta {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }),
        spec: Some(pb::PodSpec {
            containers: vec![pb::Container {
                name: "app".into(),
                ..Default::default()
            }],
            volumes,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn config_map(name: &str, items: Vec<pb::KeyToPath>, optional: Option<bool>) -> pb::Volume {
    pb::Volume {
        name: "cfg".into(),
        config_map: Some(pb::ConfigMapVolumeSource {
            name: name.into(),
            items,
            optional,
            default_mode: Some(0o640),
        }),
        ..Default::default()
    }
}

fn manager(root: &Path, table: Arc<Table>) -> Volumes {
    Volumes::new(root.to_path_buf(), table, BTreeMap::new())
}

#[tokio::test]
async fn config_maps_become_files_and_follow_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Table::default());
    let volumes = manager(dir.path(), table.clone());
    let p = pod(vec![config_map("app", vec![], None)]);
    let err = volumes.set_up(&p).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"app\" not found"
    );
    table.put(Kind::ConfigMap, "app", &[("mode", "fast")]);
    volumes.set_up(&p).await.unwrap();
    let cfg = dir.path().join("u1/cfg");
    assert_eq!(fs::read_to_string(cfg.join("mode")).unwrap(), "fast");
    let mode = fs::metadata(cfg.join("mode")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    table.put(Kind::ConfigMap, "app", &[("mode", "safe"), ("extra", "1")]);
    volumes.set_up(&p).await.unwrap();
    assert_eq!(fs::read_to_string(cfg.join("mode")).unwrap(), "safe");
    assert_eq!(fs::read_to_string(cfg.join("extra")).unwrap(), "1");
    assert_eq!(volumes.pods(), ["u1"]);
    volumes.tear_down("u1").await.unwrap();
    assert!(!dir.path().join("u1").exists());
    assert!(volumes.pods().is_empty());
    volumes.refresh(&p).await.unwrap();
    assert!(
        volumes.pods().is_empty(),
        "upkeep does not make a removed pod's volumes again"
    );
}

#[tokio::test]
async fn items_pick_keys_and_optional_sources_may_be_missing() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Table::default());
    let volumes = manager(dir.path(), table.clone());
    table.put(Kind::ConfigMap, "app", &[("a", "1"), ("b", "2")]);
    let item = |key: &str, path: &str| pb::KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: None,
    };
    let picked = pod(vec![config_map("app", vec![item("b", "conf/b.txt")], None)]);
    volumes.set_up(&picked).await.unwrap();
    let cfg = dir.path().join("u1/cfg");
    assert_eq!(fs::read_to_string(cfg.join("conf/b.txt")).unwrap(), "2");
    assert!(fs::symlink_metadata(cfg.join("a")).is_err());
    let missing_key = pod(vec![config_map("app", vec![item("zz", "z")], None)]);
    let err = volumes.set_up(&missing_key).await.unwrap_err().to_string();
    assert!(err.contains("configmap \"app\" has no key \"zz\""), "{err}");
    let optional = pod(vec![config_map("gone", vec![], Some(true))]);
    volumes.set_up(&optional).await.unwrap();
    assert!(fs::read_dir(&cfg)
        .unwrap()
        .flatten()
        .all(|e| e.file_name().to_string_lossy().starts_with("..")));
}

#[tokio::test]
async fn downward_api_files_hold_the_pods_fields() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = manager(dir.path(), Arc::new(Table::default()));
    let file = |path: &str, field: &str| pb::DownwardApiVolumeFile {
        path: path.into(),
        field_ref: Some(pb::ObjectFieldSelector {
            api_version: "v1".into(),
            field_path: field.into(),
        }),
        ..Default::default()
    };
    let mut p = pod(vec![pb::Volume {
        name: "info".into(),
        downward_api: Some(pb::DownwardApiVolumeSource {
            items: vec![
                file("labels", "metadata.labels"),
                file("name", "metadata.name"),
            ],
            default_mode: None,
        }),
        ..Default::default()
    }]);
    volumes.set_up(&p).await.unwrap();
    let info = dir.path().join("u1/info");
    assert_eq!(
        fs::read_to_string(info.join("labels")).unwrap(),
        "app=\"web\""
    );
    assert_eq!(fs::read_to_string(info.join("name")).unwrap(), "web");
    let meta = p.metadata.as_mut().unwrap();
    meta.labels.insert("tier".into(), "front".into());
    volumes.set_up(&p).await.unwrap();
    assert_eq!(
        fs::read_to_string(info.join("labels")).unwrap(),
        "app=\"web\"\ntier=\"front\""
    );
}

#[tokio::test]
async fn host_paths_are_checked_and_made_as_their_type_says() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = manager(&dir.path().join("volumes"), Arc::new(Table::default()));
    let host = |path: &Path, kind: &str| {
        pod(vec![pb::Volume {
            name: "host".into(),
            host_path: Some(pb::HostPathVolumeSource {
                path: path.display().to_string(),
                r#type: kind.into(),
            }),
            ..Default::default()
        }])
    };
    let made = dir.path().join("made");
    volumes
        .set_up(&host(&made, "DirectoryOrCreate"))
        .await
        .unwrap();
    assert!(made.is_dir());
    let err = volumes
        .set_up(&host(&made, "File"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a file"), "{err}");
    let missing = dir.path().join("missing");
    assert!(volumes.set_up(&host(&missing, "Directory")).await.is_err());
    volumes.set_up(&host(&missing, "")).await.unwrap();
    let file = dir.path().join("made/f");
    volumes.set_up(&host(&file, "FileOrCreate")).await.unwrap();
    assert!(file.is_file());
    volumes.tear_down("u1").await.unwrap();
    assert!(file.is_file(), "a hostPath is the node's: it stays");
}

#[tokio::test]
async fn mounts_resolve_sub_paths_inside_their_volume() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = manager(dir.path(), Arc::new(Table::default()));
    let mut p = pod(vec![pb::Volume {
        name: "data".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }]);
    let mount = |sub: &str, expr: &str| pb::VolumeMount {
        name: "data".into(),
        mount_path: "/data".into(),
        sub_path: sub.into(),
        sub_path_expr: expr.into(),
        ..Default::default()
    };
    let container = pb::Container {
        name: "app".into(),
        volume_mounts: vec![mount("", ""), mount("logs", ""), mount("", "by/$(POD)")],
        ..Default::default()
    };
    p.spec.as_mut().unwrap().containers[0] = container.clone();
    volumes.set_up(&p).await.unwrap();
    let env = [("POD".to_string(), "web".to_string())];
    let mounts = volumes.mounts(&p, &container, &env).unwrap();
    let data = fs::canonicalize(dir.path().join("u1/data")).unwrap();
    let sources: Vec<PathBuf> = mounts.iter().map(|m| m.source.clone()).collect();
    assert_eq!(
        sources,
        [
            dir.path().join("u1/data"),
            data.join("logs"),
            data.join("by/web")
        ]
    );
    assert!(data.join("by/web").is_dir());
    assert!(mounts.iter().all(|m| !m.read_only));
    std::os::unix::fs::symlink("/etc", data.join("escape")).unwrap();
    let escaping = pb::Container {
        volume_mounts: vec![mount("escape", "")],
        ..container
    };
    let err = volumes.mounts(&p, &escaping, &env).unwrap_err().to_string();
    assert!(err.contains("leads out of the volume"), "{err}");
}

#[tokio::test]
async fn an_empty_dir_over_its_size_limit_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = manager(dir.path(), Arc::new(Table::default()));
    let p = pod(vec![pb::Volume {
        name: "cache".into(),
        empty_dir: Some(pb::EmptyDirVolumeSource {
            medium: String::new(),
            size_limit: "64Ki".into(),
        }),
        ..Default::default()
    }]);
    volumes.set_up(&p).await.unwrap();
    let cache = dir.path().join("u1/cache");
    let mode = fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o777);
    fs::write(cache.join("small"), vec![1u8; 1024]).unwrap();
    assert_eq!(volumes.over_limit(&p), None);
    fs::write(cache.join("big"), vec![1u8; 128 << 10]).unwrap();
    assert_eq!(
        volumes.over_limit(&p).as_deref(),
        Some("Usage of EmptyDir volume \"cache\" exceeds the limit \"64Ki\". ")
    );
}

#[tokio::test]
async fn an_fs_group_owns_the_volumes_and_may_read_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Table::default());
    table.put(Kind::ConfigMap, "app", &[("key", "v")]);
    let volumes = manager(dir.path(), table);
    let mut p = pod(vec![
        config_map("app", vec![], None),
        pb::Volume {
            name: "data".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        },
    ]);
    p.spec.as_mut().unwrap().security_context = Some(pb::PodSecurityContext {
        fs_group: Some(2000),
        ..Default::default()
    });
    volumes.set_up(&p).await.unwrap();
    let data = fs::metadata(dir.path().join("u1/data")).unwrap();
    assert_eq!(
        (data.gid(), data.permissions().mode() & 0o7777),
        (2000, 0o2777)
    );
    let file = fs::metadata(dir.path().join("u1/cfg/key")).unwrap();
    assert_eq!(file.gid(), 2000);
    assert_eq!(file.permissions().mode() & 0o777, 0o640 | 0o440);
    let cfg = fs::metadata(dir.path().join("u1/cfg")).unwrap();
    assert_eq!(
        (cfg.gid(), cfg.permissions().mode() & 0o7777),
        (2000, 0o2755)
    );
}

#[tokio::test]
async fn a_projected_volume_joins_its_sources_on_a_tmpfs() {
    let dir = tempfile::tempdir().unwrap();
    let table = Arc::new(Table::default());
    table.put(Kind::ConfigMap, "app", &[("mode", "fast")]);
    table.put(Kind::Secret, "db", &[("password", "s3cret")]);
    let volumes = manager(dir.path(), table);
    let item = |key: &str, path: &str| pb::KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: None,
    };
    let p = pod(vec![pb::Volume {
        name: "all".into(),
        projected: Some(pb::ProjectedVolumeSource {
            default_mode: Some(0o600),
            sources: vec![
                pb::VolumeProjection {
                    config_map: Some(pb::ConfigMapProjection {
                        name: "app".into(),
                        items: vec![item("mode", "config/mode")],
                        optional: None,
                    }),
                    ..Default::default()
                },
                pb::VolumeProjection {
                    secret: Some(pb::SecretProjection {
                        name: "db".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                pb::VolumeProjection {
                    downward_api: Some(pb::DownwardApiProjection {
                        items: vec![pb::DownwardApiVolumeFile {
                            path: "name".into(),
                            field_ref: Some(pb::ObjectFieldSelector {
                                api_version: "v1".into(),
                                field_path: "metadata.name".into(),
                            }),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                },
            ],
        }),
        ..Default::default()
    }]);
    volumes.set_up(&p).await.unwrap();
    let all = dir.path().join("u1/all");
    assert!(is_mount_point(&all), "projected files live on a tmpfs");
    assert_eq!(fs::read_to_string(all.join("config/mode")).unwrap(), "fast");
    assert_eq!(fs::read_to_string(all.join("password")).unwrap(), "s3cret");
    assert_eq!(fs::read_to_string(all.join("name")).unwrap(), "web");
    let mode = fs::metadata(all.join("password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    volumes.tear_down("u1").await.unwrap();
    assert!(!all.exists());
}
