//! Pod volumes as Kubernetes defines them: the admission checks of
//! `volumes` and `volumeMounts`, the pod fields a downwardAPI file may
//! hold and how they are written, and the paths a volume's files may take.
//! The API server checks with these and the agent writes with them, so
//! that what admission accepts is what the agent can do.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Component;
use std::path::Path;

use crate::env::ResourceField;
use crate::names::is_dns_label;
use crate::names::is_dns_subdomain;
use crate::pb;
use crate::quantity::Quantity;
use crate::validation::Errors;

/// The file mode of a volume's files when neither the item nor the volume
/// sets one: 0644.
pub const DEFAULT_MODE: u32 = 0o644;

/// A volume's one source.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    EmptyDir(&'a pb::EmptyDirVolumeSource),
    ConfigMap(&'a pb::ConfigMapVolumeSource),
    Secret(&'a pb::SecretVolumeSource),
    HostPath(&'a pb::HostPathVolumeSource),
    DownwardApi(&'a pb::DownwardApiVolumeSource),
    Projected(&'a pb::ProjectedVolumeSource),
}

const SOURCES: &str = "emptyDir, configMap, secret, hostPath, downwardAPI or projected";

impl<'a> Source<'a> {
    /// The source `volume` sets, if it sets exactly one.
    pub fn of(volume: &'a pb::Volume) -> Result<Self, String> {
        let set: Vec<Source<'a>> = [
            volume.empty_dir.as_ref().map(Source::EmptyDir),
            volume.config_map.as_ref().map(Source::ConfigMap),
            volume.secret.as_ref().map(Source::Secret),
            volume.host_path.as_ref().map(Source::HostPath),
            volume.downward_api.as_ref().map(Source::DownwardApi),
            volume.projected.as_ref().map(Source::Projected),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set[..] {
            [one] => Ok(one),
            [] => Err(format!("must set one source: {SOURCES}")),
            _ => Err(format!("must set only one source of {SOURCES}")),
        }
    }
}

/// A pod field a downwardAPI file may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaField {
    Name,
    Namespace,
    Uid,
    Labels,
    Annotations,
    Label(String),
    Annotation(String),
}

const META_FIELDS: &str = "metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations, metadata.labels['KEY'] or metadata.annotations['KEY']";

impl MetaField {
    pub fn parse(path: &str) -> Result<Self, String> {
        let keyed = |prefix| crate::env::map_key(path, prefix);
        Ok(match path {
            "metadata.name" => Self::Name,
            "metadata.namespace" => Self::Namespace,
            "metadata.uid" => Self::Uid,
            "metadata.labels" => Self::Labels,
            "metadata.annotations" => Self::Annotations,
            _ => match (keyed("metadata.labels"), keyed("metadata.annotations")) {
                (Some(k), _) => Self::Label(k),
                (_, Some(k)) => Self::Annotation(k),
                _ => {
                    return Err(format!(
                        "{path:?} is not a field a volume file can hold: use {META_FIELDS}"
                    ))
                }
            },
        })
    }

    /// The file's contents: a map is one `key="value"` line per key in
    /// key order, as the kubelet writes it.
    pub fn value(&self, pod: &pb::Pod) -> String {
        let meta = pod.metadata.clone().unwrap_or_default();
        match self {
            Self::Name => meta.name,
            Self::Namespace => meta.namespace,
            Self::Uid => meta.uid,
            Self::Labels => format_map(&meta.labels),
            Self::Annotations => format_map(&meta.annotations),
            Self::Label(k) => meta.labels.get(k).cloned().unwrap_or_default(),
            Self::Annotation(k) => meta.annotations.get(k).cloned().unwrap_or_default(),
        }
    }
}

fn format_map(map: &BTreeMap<String, String>) -> String {
    let lines: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    lines.join("\n")
}

/// A relative path that stays inside the directory it is joined to, and
/// does not begin with `..` (the names the kubelet's writer keeps for
/// itself). Returns why not.
pub fn local_path_error(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("must not be empty");
    }
    if Path::new(path).is_absolute() {
        return Some("must be a relative path");
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Some("must not contain '..'");
    }
    if path.starts_with("..") {
        return Some("must not start with '..'");
    }
    None
}

fn check_mode(errs: &mut Errors, field: String, mode: Option<i32>) {
    if mode.is_some_and(|m| !(0..=0o777).contains(&m)) {
        errs.add(field, "must be a file mode from 0 to 0777 (octal)");
    }
}

fn check_path(errs: &mut Errors, field: String, path: &str, paths: &mut BTreeSet<String>) {
    if let Some(why) = local_path_error(path) {
        errs.add(field, why);
    } else if !paths.insert(path.trim_end_matches('/').to_string()) {
        errs.add(field, format!("{path:?} is written by another item"));
    }
}

fn check_items(
    errs: &mut Errors,
    field: &str,
    items: &[pb::KeyToPath],
    paths: &mut BTreeSet<String>,
) {
    for (i, item) in items.iter().enumerate() {
        let f = format!("{field}.items[{i}]");
        crate::validation::check_data_key(errs, &format!("{f}.key"), &item.key);
        check_path(errs, format!("{f}.path"), &item.path, paths);
        check_mode(errs, format!("{f}.mode"), item.mode);
    }
}

fn check_object_name(errs: &mut Errors, field: String, name: &str) {
    if !is_dns_subdomain(name) {
        errs.add(field, format!("{name:?} is not a valid object name"));
    }
}

fn check_downward_files(
    errs: &mut Errors,
    field: &str,
    files: &[pb::DownwardApiVolumeFile],
    containers: &[&str],
    paths: &mut BTreeSet<String>,
) {
    for (i, file) in files.iter().enumerate() {
        let f = format!("{field}.items[{i}]");
        check_path(errs, format!("{f}.path"), &file.path, paths);
        check_mode(errs, format!("{f}.mode"), file.mode);
        match (&file.field_ref, &file.resource_field_ref) {
            (Some(r), None) => {
                if let Err(e) = MetaField::parse(&r.field_path) {
                    errs.add(format!("{f}.fieldRef.fieldPath"), e);
                }
                if !matches!(r.api_version.as_str(), "" | "v1") {
                    errs.add(format!("{f}.fieldRef.apiVersion"), "must be v1");
                }
            }
            (None, Some(r)) => {
                let g = format!("{f}.resourceFieldRef");
                match ResourceField::parse(&r.resource) {
                    Ok(res) => {
                        if let Err(e) = res.divisor(&r.divisor) {
                            errs.add(format!("{g}.divisor"), e);
                        }
                    }
                    Err(e) => errs.add(format!("{g}.resource"), e),
                }
                if !containers.contains(&r.container_name.as_str()) {
                    errs.add(
                        format!("{g}.containerName"),
                        format!(
                            "{:?} is not a container of this pod: a volume file must name its container",
                            r.container_name
                        ),
                    );
                }
            }
            _ => errs.add(f, "must set exactly one of fieldRef and resourceFieldRef"),
        }
    }
}

const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

fn check_source(errs: &mut Errors, f: &str, source: Source<'_>, containers: &[&str]) {
    let mut paths = BTreeSet::new();
    match source {
        Source::EmptyDir(e) => {
            if !matches!(e.medium.as_str(), "" | "Memory") {
                errs.add(
                    format!("{f}.emptyDir.medium"),
                    format!(
                        "{:?} is not supported: use \"\" (the node's disk) or Memory",
                        e.medium
                    ),
                );
            }
            if !e.size_limit.is_empty() {
                match Quantity::parse(&e.size_limit) {
                    Ok(q) if q > Quantity::default() => {}
                    Ok(_) => errs.add(format!("{f}.emptyDir.sizeLimit"), "must be more than 0"),
                    Err(e) => errs.add(format!("{f}.emptyDir.sizeLimit"), e.to_string()),
                }
            }
        }
        Source::ConfigMap(c) => {
            check_object_name(errs, format!("{f}.configMap.name"), &c.name);
            check_items(errs, &format!("{f}.configMap"), &c.items, &mut paths);
            check_mode(errs, format!("{f}.configMap.defaultMode"), c.default_mode);
        }
        Source::Secret(s) => {
            check_object_name(errs, format!("{f}.secret.secretName"), &s.secret_name);
            check_items(errs, &format!("{f}.secret"), &s.items, &mut paths);
            check_mode(errs, format!("{f}.secret.defaultMode"), s.default_mode);
        }
        Source::HostPath(h) => {
            if !Path::new(&h.path).is_absolute() {
                errs.add(format!("{f}.hostPath.path"), "must be an absolute path");
            }
            if !HOST_PATH_TYPES.contains(&h.r#type.as_str()) {
                errs.add(
                    format!("{f}.hostPath.type"),
                    format!(
                        "{:?} must be one of {}",
                        h.r#type,
                        HOST_PATH_TYPES[1..].join(", ")
                    ),
                );
            }
        }
        Source::DownwardApi(d) => {
            let g = format!("{f}.downwardAPI");
            check_downward_files(errs, &g, &d.items, containers, &mut paths);
            check_mode(errs, format!("{g}.defaultMode"), d.default_mode);
        }
        Source::Projected(p) => {
            check_mode(errs, format!("{f}.projected.defaultMode"), p.default_mode);
            for (i, s) in p.sources.iter().enumerate() {
                let g = format!("{f}.projected.sources[{i}]");
                match (&s.config_map, &s.secret, &s.downward_api) {
                    (Some(c), None, None) => {
                        check_object_name(errs, format!("{g}.configMap.name"), &c.name);
                        check_items(errs, &format!("{g}.configMap"), &c.items, &mut paths);
                    }
                    (None, Some(s), None) => {
                        check_object_name(errs, format!("{g}.secret.name"), &s.name);
                        check_items(errs, &format!("{g}.secret"), &s.items, &mut paths);
                    }
                    (None, None, Some(d)) => {
                        let h = format!("{g}.downwardAPI");
                        check_downward_files(errs, &h, &d.items, containers, &mut paths);
                    }
                    _ => errs.add(
                        g,
                        "must set exactly one of configMap, secret and downwardAPI",
                    ),
                }
            }
        }
    }
}

/// Checks `spec.volumes`.
pub fn check_volumes(errs: &mut Errors, field: &str, spec: &pb::PodSpec) {
    let containers: Vec<&str> = spec
        .init_containers
        .iter()
        .chain(&spec.containers)
        .map(|c| c.name.as_str())
        .collect();
    let mut names = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let f = format!("{field}.volumes[{i}]");
        if !is_dns_label(&v.name) {
            errs.add(
                format!("{f}.name"),
                format!(
                    "{:?} must be a DNS label: lowercase letters, digits and '-', at most 63",
                    v.name
                ),
            );
        }
        if !names.insert(v.name.as_str()) {
            errs.add(
                format!("{f}.name"),
                format!("{:?} is used by another volume", v.name),
            );
        }
        match Source::of(v) {
            Ok(source) => check_source(errs, &f, source, &containers),
            Err(e) => errs.add(f, e),
        }
    }
}

/// Why a volume may not be mounted at `target`: over the container's
/// root, or within the kernel's `/proc` and `/sys` (runc refuses most of
/// these too; the process runtime, which runs on the node's root, would
/// shadow the node's own).
fn reserved_target(target: &Path) -> Option<String> {
    let mut parts = target.components().skip(1);
    match parts.next() {
        None => Some("must not be / : a volume cannot replace the container's root".into()),
        Some(Component::Normal(top)) if top == "proc" || top == "sys" => Some(format!(
            "must not be in /{}: the kernel's files are not a place for a volume",
            top.to_string_lossy()
        )),
        _ => None,
    }
}

/// Checks a container's `volumeMounts` against the pod's volumes.
pub fn check_mounts(errs: &mut Errors, field: &str, c: &pb::Container, volumes: &[pb::Volume]) {
    let mut targets = BTreeSet::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let f = format!("{field}.volumeMounts[{i}]");
        if !volumes.iter().any(|v| v.name == m.name) {
            errs.add(
                format!("{f}.name"),
                format!("{:?} is not one of the pod's volumes", m.name),
            );
        }
        let target = Path::new(&m.mount_path);
        if !target.is_absolute() || m.mount_path.contains(':') {
            errs.add(
                format!("{f}.mountPath"),
                "must be an absolute path, without ':'",
            );
        } else if target
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            errs.add(format!("{f}.mountPath"), "must not contain '..'");
        } else if let Some(why) = reserved_target(target) {
            errs.add(format!("{f}.mountPath"), why);
        } else if !targets.insert(target.components().collect::<Vec<_>>()) {
            errs.add(
                format!("{f}.mountPath"),
                format!("{:?} is the path of another mount", m.mount_path),
            );
        }
        if !m.sub_path.is_empty() && !m.sub_path_expr.is_empty() {
            errs.add(
                format!("{f}.subPathExpr"),
                "may not be set with subPath: use one of them",
            );
        }
        for (name, sub) in [("subPath", &m.sub_path), ("subPathExpr", &m.sub_path_expr)] {
            if let Some(why) = (!sub.is_empty()).then(|| sub_path_error(sub)).flatten() {
                errs.add(format!("{f}.{name}"), why);
            }
        }
        match m.mount_propagation.as_str() {
            "" | "None" => {}
            "HostToContainer" | "Bidirectional" => errs.add(
                format!("{f}.mountPropagation"),
                format!(
                    "{} is not supported: Berth's volumes propagate no mounts (use None, or leave it out)",
                    m.mount_propagation
                ),
            ),
            other => errs.add(
                format!("{f}.mountPropagation"),
                format!("{other:?} must be None, HostToContainer or Bidirectional"),
            ),
        }
    }
}

/// Why `sub` cannot be a subPath: it must stay inside its volume.
pub fn sub_path_error(sub: &str) -> Option<&'static str> {
    if Path::new(sub).is_absolute() {
        return Some("must be a relative path");
    }
    Path::new(sub)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
        .then_some("must not contain '..'")
}

/// The ConfigMaps and Secrets `spec`'s volumes name: (ConfigMaps, Secrets).
pub fn referenced(spec: &pb::PodSpec) -> (Vec<&str>, Vec<&str>) {
    let (mut config_maps, mut secrets) = (Vec::new(), Vec::new());
    for v in &spec.volumes {
        if let Some(c) = &v.config_map {
            config_maps.push(c.name.as_str());
        }
        if let Some(s) = &v.secret {
            secrets.push(s.secret_name.as_str());
        }
        for s in v.projected.iter().flat_map(|p| &p.sources) {
            if let Some(c) = &s.config_map {
                config_maps.push(c.name.as_str());
            }
            if let Some(s) = &s.secret {
                secrets.push(s.name.as_str());
            }
        }
    }
    (config_maps, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_fields_parse_and_maps_are_written_as_the_kubelet_does() {
        assert_eq!(MetaField::parse("metadata.labels"), Ok(MetaField::Labels));
        assert_eq!(
            MetaField::parse("metadata.annotations['a/b']"),
            Ok(MetaField::Annotation("a/b".into()))
        );
        assert!(MetaField::parse("spec.nodeName")
            .unwrap_err()
            .contains("metadata.labels"));
        let mut pod = pb::Pod::default();
        let meta = pod.metadata.get_or_insert_with(Default::default);
        meta.labels.insert("zone".into(), "a \"b\"".into());
        meta.labels.insert("app".into(), "web".into());
        assert_eq!(
            MetaField::Labels.value(&pod),
            "app=\"web\"\nzone=\"a \\\"b\\\"\""
        );
        assert_eq!(MetaField::Label("app".into()).value(&pod), "web");
        assert_eq!(MetaField::Annotations.value(&pod), "");
    }

    #[test]
    fn file_paths_stay_inside_their_volume() {
        assert_eq!(local_path_error("a/b.conf"), None);
        assert!(local_path_error("").is_some());
        assert!(local_path_error("/etc/passwd").is_some());
        assert!(local_path_error("a/../../b").is_some());
        assert!(local_path_error("..data").is_some());
        assert_eq!(sub_path_error("logs/app"), None);
        assert!(sub_path_error("../x").is_some());
    }

    #[test]
    fn manifests_write_modes_in_octal_and_unknown_volume_kinds_are_refused_by_name() {
        let pod = |volumes: &str| {
            let text = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: a, command: [x]}}]\n  volumes:\n{volumes}"
            );
            crate::manifest::parse(&text).map(|mut objects| match objects.pop() {
                Some(crate::kinds::AnyObject::Pod(p)) => p.spec.unwrap().volumes,
                _ => panic!("not a pod"),
            })
        };
        let volumes = pod("  - name: s\n    secret: {secretName: s, defaultMode: 0400, items: [{key: k, path: k, mode: 420}]}\n").unwrap();
        let secret = volumes[0].secret.as_ref().unwrap();
        assert_eq!(secret.default_mode, Some(0o400));
        assert_eq!(secret.items[0].mode, Some(0o644));
        let err = pod("  - name: s\n    secret: {secretName: s, defaultMode: rw}\n").unwrap_err();
        assert!(err.to_string().contains("is not a file mode"), "{err}");
        let err = pod("  - name: d\n    persistentVolumeClaim: {claimName: c}\n").unwrap_err();
        assert!(err.to_string().contains("persistentVolumeClaim"), "{err}");
    }

    fn spec(volumes: Vec<pb::Volume>, mounts: Vec<pb::VolumeMount>) -> pb::PodSpec {
        pb::PodSpec {
            containers: vec![pb::Container {
                name: "app".into(),
                volume_mounts: mounts,
                ..Default::default()
            }],
            volumes,
            ..Default::default()
        }
    }

    fn errors(spec: &pb::PodSpec) -> String {
        let mut errs = Errors::default();
        check_volumes(&mut errs, "spec", spec);
        check_mounts(
            &mut errs,
            "spec.containers[0]",
            &spec.containers[0],
            &spec.volumes,
        );
        errs.finish()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn volumes_and_mounts_are_checked_by_name() {
        let empty = |name: &str| pb::Volume {
            name: name.into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        };
        let mount = |name: &str, path: &str| pb::VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        };
        assert_eq!(
            errors(&spec(vec![empty("data")], vec![mount("data", "/data")])),
            ""
        );
        let both = pb::Volume {
            secret: Some(pb::SecretVolumeSource {
                secret_name: "s".into(),
                ..Default::default()
            }),
            ..empty("x")
        };
        let text = errors(&spec(vec![both, empty("x")], vec![mount("nope", "data")]));
        for wanted in [
            "spec.volumes[0]: must set only one source",
            "spec.volumes[1].name: \"x\" is used by another volume",
            "volumeMounts[0].name: \"nope\" is not one of the pod's volumes",
            "volumeMounts[0].mountPath: must be an absolute path",
        ] {
            assert!(text.contains(wanted), "{wanted:?} not in {text}");
        }
        let propagating = pb::VolumeMount {
            mount_propagation: "Bidirectional".into(),
            sub_path: "../up".into(),
            ..mount("data", "/data")
        };
        let text = errors(&spec(vec![empty("data")], vec![propagating]));
        assert!(
            text.contains("mountPropagation: Bidirectional is not supported"),
            "{text}"
        );
        assert!(text.contains("subPath: must not contain '..'"), "{text}");
        for (path, wanted) in [
            (
                "/",
                "must not be / : a volume cannot replace the container's root",
            ),
            ("/proc/sys", "must not be in /proc"),
            ("/sys", "must not be in /sys"),
        ] {
            let text = errors(&spec(vec![empty("data")], vec![mount("data", path)]));
            assert!(text.contains(wanted), "{path}: {text}");
        }
        let fine = spec(vec![empty("data")], vec![mount("data", "/process/sys")]);
        assert_eq!(errors(&fine), "");
        let items = pb::Volume {
            name: "cfg".into(),
            config_map: Some(pb::ConfigMapVolumeSource {
                name: "app".into(),
                items: vec![
                    pb::KeyToPath {
                        key: "a".into(),
                        path: "conf/a".into(),
                        mode: Some(0o1777),
                    },
                    pb::KeyToPath {
                        key: "b".into(),
                        path: "conf/a".into(),
                        mode: None,
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = errors(&spec(vec![items], vec![]));
        assert!(
            text.contains("items[0].mode: must be a file mode"),
            "{text}"
        );
        assert!(
            text.contains("items[1].path: \"conf/a\" is written by another item"),
            "{text}"
        );
    }
}
