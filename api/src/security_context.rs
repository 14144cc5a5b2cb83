//! Who a pod's processes run as, as Kubernetes defines it: the admission
//! checks of the pod's and containers' `securityContext`, Linux capability
//! names, and the settings a container ends up with when its own context
//! and the pod's both speak. The API server checks with these and the
//! agent runs with them.

use crate::pb;
use crate::validation::Errors;

/// Linux capabilities by number, without the `CAP_` prefix.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability as a container names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Capability {
    All,
    /// The kernel's number of one capability.
    One(u32),
}

impl Capability {
    /// `NET_ADMIN`, `CAP_NET_ADMIN` (any case) or `ALL`.
    pub fn parse(name: &str) -> Result<Self, String> {
        let upper = name.to_ascii_uppercase();
        if upper == "ALL" {
            return Ok(Self::All);
        }
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        CAPABILITIES
            .iter()
            .position(|c| *c == bare)
            .map(|i| Self::One(i as u32))
            .ok_or_else(|| {
                format!("{name:?} is not a Linux capability (e.g. NET_ADMIN, CAP_SYS_TIME or ALL)")
            })
    }

    /// Every capability this names.
    pub fn numbers(self) -> Vec<u32> {
        match self {
            Self::All => (0..CAPABILITIES.len() as u32).collect(),
            Self::One(n) => vec![n],
        }
    }

    /// As Docker names it (`CAP_NET_ADMIN`, `ALL`).
    pub fn docker_name(self) -> String {
        match self {
            Self::All => "ALL".into(),
            Self::One(n) => format!("CAP_{}", CAPABILITIES[n as usize]),
        }
    }
}

/// What a container runs with: its own context over the pod's. None and
/// empty: the runtime's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub user: Option<u32>,
    pub group: Option<u32>,
    /// supplementalGroups, then fsGroup.
    pub groups: Vec<u32>,
    pub non_root: bool,
    pub no_new_privs: bool,
    pub read_only_root: bool,
    pub add: Vec<Capability>,
    pub drop: Vec<Capability>,
    pub privileged: bool,
}

impl Settings {
    /// Whether it sets who the process runs as.
    pub fn sets_identity(&self) -> bool {
        self.user.is_some() || self.group.is_some() || !self.groups.is_empty()
    }

    /// The numbers of the capabilities dropped and not added back (`add`
    /// wins, as with Docker).
    pub fn dropped(&self) -> Vec<u32> {
        let added: Vec<u32> = self.add.iter().flat_map(|c| c.numbers()).collect();
        let mut dropped: Vec<u32> = self.drop.iter().flat_map(|c| c.numbers()).collect();
        dropped.retain(|c| !added.contains(c));
        dropped.sort_unstable();
        dropped.dedup();
        dropped
    }
}

fn id(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

/// The settings `container` of `pod` runs with (both checked at
/// admission).
pub fn settings(pod: &pb::Pod, container: &pb::Container) -> Settings {
    let p = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let c = container.security_context.clone().unwrap_or_default();
    let caps = |names: &[String]| {
        names
            .iter()
            .filter_map(|n| Capability::parse(n).ok())
            .collect()
    };
    let capabilities = c.capabilities.clone().unwrap_or_default();
    let mut groups: Vec<u32> = p
        .supplemental_groups
        .iter()
        .filter_map(|g| id(Some(*g)))
        .collect();
    groups.extend(id(p.fs_group));
    Settings {
        user: id(c.run_as_user.or(p.run_as_user)),
        group: id(c.run_as_group.or(p.run_as_group)),
        groups,
        non_root: c.run_as_non_root.or(p.run_as_non_root) == Some(true),
        no_new_privs: c.allow_privilege_escalation == Some(false),
        read_only_root: c.read_only_root_filesystem == Some(true),
        add: caps(&capabilities.add),
        drop: caps(&capabilities.drop),
        privileged: c.privileged == Some(true),
    }
}

/// The group the pod's volumes belong to, if it sets one.
pub fn fs_group(pod: &pb::Pod) -> Option<u32> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|c| id(c.fs_group))
}

fn check_id(errs: &mut Errors, field: String, value: Option<i64>) {
    if value.is_some_and(|v| !(0..=i64::from(i32::MAX)).contains(&v)) {
        errs.add(field, "must be from 0 to 2147483647");
    }
}

/// Checks the pod's `securityContext` at `field`.
pub fn check_pod(errs: &mut Errors, field: &str, c: &pb::PodSecurityContext) {
    check_id(errs, format!("{field}.runAsUser"), c.run_as_user);
    check_id(errs, format!("{field}.runAsGroup"), c.run_as_group);
    check_id(errs, format!("{field}.fsGroup"), c.fs_group);
    for (i, g) in c.supplemental_groups.iter().enumerate() {
        check_id(errs, format!("{field}.supplementalGroups[{i}]"), Some(*g));
    }
    if c.run_as_non_root == Some(true) && c.run_as_user == Some(0) {
        errs.add(
            format!("{field}.runAsNonRoot"),
            "cannot be true with runAsUser 0",
        );
    }
}

/// Checks a container's `securityContext` at `field`.
pub fn check_container(errs: &mut Errors, field: &str, c: &pb::SecurityContext) {
    check_id(errs, format!("{field}.runAsUser"), c.run_as_user);
    check_id(errs, format!("{field}.runAsGroup"), c.run_as_group);
    if c.run_as_non_root == Some(true) && c.run_as_user == Some(0) {
        errs.add(
            format!("{field}.runAsNonRoot"),
            "cannot be true with runAsUser 0",
        );
    }
    let caps = c.capabilities.clone().unwrap_or_default();
    let mut adds_sys_admin = false;
    for (list, names) in [("add", &caps.add), ("drop", &caps.drop)] {
        for (i, name) in names.iter().enumerate() {
            match Capability::parse(name) {
                Ok(cap) => adds_sys_admin |= list == "add" && cap.numbers().contains(&21),
                Err(e) => errs.add(format!("{field}.capabilities.{list}[{i}]"), e),
            }
        }
    }
    if c.allow_privilege_escalation == Some(false) {
        if c.privileged == Some(true) {
            errs.add(
                format!("{field}.allowPrivilegeEscalation"),
                "cannot be false with privileged true",
            );
        }
        if adds_sys_admin {
            errs.add(
                format!("{field}.allowPrivilegeEscalation"),
                "cannot be false with CAP_SYS_ADMIN added",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_parse_with_or_without_their_prefix() {
        assert_eq!(Capability::parse("NET_RAW"), Ok(Capability::One(13)));
        assert_eq!(Capability::parse("cap_net_raw"), Ok(Capability::One(13)));
        assert_eq!(Capability::parse("all"), Ok(Capability::All));
        assert!(Capability::parse("NET_WIZARD").is_err());
        assert_eq!(Capability::One(21).docker_name(), "CAP_SYS_ADMIN");
    }

    #[test]
    fn a_containers_context_overrides_the_pods() {
        let pod = pb::Pod {
            spec: Some(pb::PodSpec {
                security_context: Some(pb::PodSecurityContext {
                    run_as_user: Some(1000),
                    run_as_group: Some(1000),
                    run_as_non_root: Some(true),
                    supplemental_groups: vec![4000],
                    fs_group: Some(2000),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = pb::Container {
            security_context: Some(pb::SecurityContext {
                run_as_user: Some(1001),
                allow_privilege_escalation: Some(false),
                capabilities: Some(pb::Capabilities {
                    add: vec![],
                    drop: vec!["ALL".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = settings(&pod, &container);
        assert_eq!((s.user, s.group), (Some(1001), Some(1000)));
        assert_eq!(s.groups, [4000, 2000]);
        assert!(s.non_root && s.no_new_privs && !s.privileged);
        assert_eq!(s.drop, [Capability::All]);
        assert_eq!(s.dropped().len(), CAPABILITIES.len());
        let kept = Settings {
            add: vec![Capability::One(13)],
            ..s.clone()
        };
        assert!(!kept.dropped().contains(&13), "add wins over drop");
        assert_eq!(fs_group(&pod), Some(2000));
    }

    #[test]
    fn contradictions_and_unknown_capabilities_are_refused() {
        let mut errs = Errors::default();
        check_container(
            &mut errs,
            "c",
            &pb::SecurityContext {
                run_as_user: Some(-1),
                allow_privilege_escalation: Some(false),
                privileged: Some(true),
                capabilities: Some(pb::Capabilities {
                    add: vec!["SYS_ADMIN".into(), "MAGIC".into()],
                    drop: vec![],
                }),
                ..Default::default()
            },
        );
        let text = errs.finish().unwrap_err().to_string();
        for wanted in [
            "c.runAsUser: must be from 0",
            "c.capabilities.add[1]: \"MAGIC\" is not a Linux capability",
            "cannot be false with privileged true",
            "cannot be false with CAP_SYS_ADMIN added",
        ] {
            assert!(text.contains(wanted), "{wanted:?} not in {text}");
        }
    }
}
