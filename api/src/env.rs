//! A container's environment as Kubernetes defines it: the pod fields and
//! resources a variable may name and how their values are written, the
//! admission checks of `env` and `envFrom`, and `$(NAME)` expansion. The
//! API server checks with these; the agent resolves with them, so that
//! what admission accepts is exactly what the agent can do.

use std::collections::BTreeMap;

use crate::names::is_dns_subdomain;
use crate::pb;
use crate::quantity::Quantity;
use crate::validation::check_data_key;
use crate::validation::Errors;

/// A pod field a variable (`fieldRef`) may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodField {
    Name,
    Namespace,
    Uid,
    Label(String),
    Annotation(String),
    NodeName,
    ServiceAccountName,
    PodIp,
    PodIps,
    HostIp,
    HostIps,
}

const FIELD_PATHS: &str = "metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP or status.hostIPs";

/// `KEY` of a field path `PREFIX['KEY']`.
pub(crate) fn map_key(path: &str, prefix: &str) -> Option<String> {
    path.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("['"))
        .and_then(|rest| rest.strip_suffix("']"))
        .map(str::to_string)
}

impl PodField {
    pub fn parse(path: &str) -> Result<Self, String> {
        let keyed = |prefix| map_key(path, prefix);
        Ok(match path {
            "metadata.name" => Self::Name,
            "metadata.namespace" => Self::Namespace,
            "metadata.uid" => Self::Uid,
            "spec.nodeName" => Self::NodeName,
            "spec.serviceAccountName" => Self::ServiceAccountName,
            "status.podIP" => Self::PodIp,
            "status.podIPs" => Self::PodIps,
            "status.hostIP" => Self::HostIp,
            "status.hostIPs" => Self::HostIps,
            _ => {
                if let Some(key) = keyed("metadata.labels") {
                    Self::Label(key)
                } else if let Some(key) = keyed("metadata.annotations") {
                    Self::Annotation(key)
                } else {
                    return Err(format!(
                        "{path:?} is not a field a variable can read: use {FIELD_PATHS}"
                    ));
                }
            }
        })
    }

    /// The field's value in `pod`; a label or annotation it lacks is
    /// empty, as with the kubelet.
    pub fn value(&self, pod: &pb::Pod) -> String {
        let meta = pod.metadata.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        match self {
            Self::Name => meta.name,
            Self::Namespace => meta.namespace,
            Self::Uid => meta.uid,
            Self::Label(k) => meta.labels.get(k).cloned().unwrap_or_default(),
            Self::Annotation(k) => meta.annotations.get(k).cloned().unwrap_or_default(),
            Self::NodeName => spec.node_name,
            Self::ServiceAccountName => spec.service_account_name,
            Self::PodIp => status.pod_ip,
            Self::PodIps => {
                let ips: Vec<String> = status.pod_ips.into_iter().map(|p| p.ip).collect();
                if ips.is_empty() {
                    status.pod_ip
                } else {
                    ips.join(",")
                }
            }
            Self::HostIp | Self::HostIps => status.host_ip,
        }
    }
}

/// A container resource a variable (`resourceFieldRef`) may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceField {
    LimitsCpu,
    LimitsMemory,
    RequestsCpu,
    RequestsMemory,
}

const CPU_DIVISORS: &[&str] = &["1m", "1"];
const MEMORY_DIVISORS: &[&str] = &[
    "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
];

impl ResourceField {
    pub fn parse(resource: &str) -> Result<Self, String> {
        Ok(match resource {
            "limits.cpu" => Self::LimitsCpu,
            "limits.memory" => Self::LimitsMemory,
            "requests.cpu" => Self::RequestsCpu,
            "requests.memory" => Self::RequestsMemory,
            r if r.ends_with("ephemeral-storage") || r.contains("hugepages-") => {
                return Err(format!(
                    "{r:?} is not supported: Berth accounts for no ephemeral storage or huge pages; use limits.cpu, limits.memory, requests.cpu or requests.memory"
                ))
            }
            r => {
                return Err(format!(
                    "{r:?} is not a resource a variable can read: use limits.cpu, limits.memory, requests.cpu or requests.memory"
                ))
            }
        })
    }

    fn is_cpu(self) -> bool {
        matches!(self, Self::LimitsCpu | Self::RequestsCpu)
    }

    fn name(self) -> &'static str {
        if self.is_cpu() {
            "cpu"
        } else {
            "memory"
        }
    }

    /// `divisor` (empty or 0, as Kubernetes writes an unset one: 1), if
    /// it is one Kubernetes allows for this resource.
    pub fn divisor(self, divisor: &str) -> Result<Quantity, String> {
        let text = if divisor.is_empty() { "1" } else { divisor };
        let allowed = if self.is_cpu() {
            CPU_DIVISORS
        } else {
            MEMORY_DIVISORS
        };
        let q = Quantity::parse(text).map_err(|e| e.to_string())?;
        if q == Quantity::default() {
            return Ok(Quantity(1000));
        }
        let is_allowed = allowed
            .iter()
            .any(|a| Quantity::parse(a).is_ok_and(|d| d == q));
        if is_allowed {
            Ok(q)
        } else {
            Err(format!(
                "{text:?} is not a divisor for {}: use one of {}",
                self.name(),
                allowed.join(", ")
            ))
        }
    }

    /// The value for `container`, in units of `divisor` rounded up. A
    /// limit not set reads as the node's `allocatable`; a request not set
    /// as its limit when that is set (Kubernetes' defaulting), else zero.
    pub fn value(
        self,
        container: &pb::Container,
        divisor: Quantity,
        allocatable: &BTreeMap<String, String>,
    ) -> String {
        let resources = container.resources.clone().unwrap_or_default();
        let read = |map: &BTreeMap<String, String>| {
            map.get(self.name()).and_then(|q| Quantity::parse(q).ok())
        };
        let amount = match self {
            Self::LimitsCpu | Self::LimitsMemory => {
                read(&resources.limits).or_else(|| read(allocatable))
            }
            Self::RequestsCpu | Self::RequestsMemory => {
                read(&resources.requests).or_else(|| read(&resources.limits))
            }
        }
        .unwrap_or_default();
        // Both in thousandths; a divisor is never zero (see `divisor`).
        amount
            .millis()
            .div_ceil(divisor.millis().max(1))
            .to_string()
    }
}

/// Kubernetes' `$(NAME)` expansion: a defined NAME is replaced by its
/// value, an undefined one is left as written, `$$` is one `$`, and any
/// other `$` stays.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A variable name: anything printable but '=' (Kubernetes' relaxed rule).
fn is_env_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != '=')
}

fn check_object_name(errs: &mut Errors, field: &str, name: &str) {
    if !is_dns_subdomain(name) {
        errs.add(
            field,
            format!("{name:?} is not a valid name: lower-case letters, digits, '-' and '.'"),
        );
    }
}

fn check_key_ref(errs: &mut Errors, field: &str, name: &str, key: &str) {
    check_object_name(errs, &format!("{field}.name"), name);
    if key.is_empty() {
        errs.add(format!("{field}.key"), "is required");
    } else {
        check_data_key(errs, &format!("{field}.key"), key);
    }
}

/// Checks one variable's source; `containers` are the pod's container
/// names, which a `resourceFieldRef` may name.
fn check_source(errs: &mut Errors, field: &str, from: &pb::EnvVarSource, containers: &[&str]) {
    let set = [
        from.field_ref.is_some(),
        from.resource_field_ref.is_some(),
        from.config_map_key_ref.is_some(),
        from.secret_key_ref.is_some(),
    ]
    .into_iter()
    .filter(|s| *s)
    .count();
    if set != 1 {
        errs.add(
            field,
            "must set exactly one of fieldRef, resourceFieldRef, configMapKeyRef and secretKeyRef",
        );
    }
    if let Some(f) = &from.field_ref {
        if !matches!(f.api_version.as_str(), "" | "v1") {
            errs.add(
                format!("{field}.fieldRef.apiVersion"),
                format!("{:?} is not a version of Pod: use v1", f.api_version),
            );
        }
        if let Err(e) = PodField::parse(&f.field_path) {
            errs.add(format!("{field}.fieldRef.fieldPath"), e);
        }
    }
    if let Some(r) = &from.resource_field_ref {
        let f = format!("{field}.resourceFieldRef");
        match ResourceField::parse(&r.resource) {
            Ok(resource) => {
                if let Err(e) = resource.divisor(&r.divisor) {
                    errs.add(format!("{f}.divisor"), e);
                }
            }
            Err(e) => errs.add(format!("{f}.resource"), e),
        }
        if !r.container_name.is_empty() && !containers.contains(&r.container_name.as_str()) {
            errs.add(
                format!("{f}.containerName"),
                format!("{:?} is not a container of this pod", r.container_name),
            );
        }
    }
    if let Some(r) = &from.config_map_key_ref {
        check_key_ref(errs, &format!("{field}.configMapKeyRef"), &r.name, &r.key);
    }
    if let Some(r) = &from.secret_key_ref {
        check_key_ref(errs, &format!("{field}.secretKeyRef"), &r.name, &r.key);
    }
}

/// Checks `env` and `envFrom` of the container at `field`.
pub fn check_container_env(
    errs: &mut Errors,
    field: &str,
    container: &pb::Container,
    containers: &[&str],
) {
    for (i, e) in container.env.iter().enumerate() {
        let f = format!("{field}.env[{i}]");
        if !is_env_name(&e.name) {
            errs.add(
                format!("{f}.name"),
                "must be printable characters other than '=' (and not empty)",
            );
        }
        if let Some(from) = &e.value_from {
            if !e.value.is_empty() {
                errs.add(
                    format!("{f}.valueFrom"),
                    "may not be set when `value` is not empty",
                );
            }
            check_source(errs, &format!("{f}.valueFrom"), from, containers);
        }
    }
    for (i, e) in container.env_from.iter().enumerate() {
        let f = format!("{field}.envFrom[{i}]");
        if !e.prefix.is_empty() && !is_env_name(&e.prefix) {
            errs.add(
                format!("{f}.prefix"),
                "must be printable characters other than '='",
            );
        }
        match (&e.config_map_ref, &e.secret_ref) {
            (Some(c), None) => check_object_name(errs, &format!("{f}.configMapRef.name"), &c.name),
            (None, Some(s)) => check_object_name(errs, &format!("{f}.secretRef.name"), &s.name),
            _ => errs.add(f, "must set exactly one of configMapRef and secretRef"),
        }
    }
}

/// The ConfigMaps and Secrets `pod`'s containers and volumes name, for
/// the node authorizer: (ConfigMaps, Secrets).
pub fn referenced(pod: &pb::Pod) -> (Vec<&str>, Vec<&str>) {
    let (mut config_maps, mut secrets) = (Vec::new(), Vec::new());
    let containers = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().chain(&s.containers));
    for c in containers {
        for e in c.env.iter().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &e.config_map_key_ref {
                config_maps.push(r.name.as_str());
            }
            if let Some(r) = &e.secret_key_ref {
                secrets.push(r.name.as_str());
            }
        }
        for e in &c.env_from {
            if let Some(r) = &e.config_map_ref {
                config_maps.push(r.name.as_str());
            }
            if let Some(r) = &e.secret_ref {
                secrets.push(r.name.as_str());
            }
        }
    }
    if let Some(spec) = &pod.spec {
        let (c, s) = crate::volumes::referenced(spec);
        config_maps.extend(c);
        secrets.extend(s);
    }
    (config_maps, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = env(&[("A", "x"), ("EMPTY", "")]);
        assert_eq!(expand("$(A)-$(A)", &vars), "x-x");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$$$(A)", &vars), "$x");
        assert_eq!(expand("a$b", &vars), "a$b");
        assert_eq!(expand("$(A", &vars), "$(A");
        assert_eq!(expand("end$", &vars), "end$");
        assert_eq!(expand("$(EMPTY)|", &vars), "|");
        assert_eq!(expand("é$(A)é", &vars), "éxé");
        assert_eq!(expand("$é", &vars), "$é");
    }

    #[test]
    fn fields_parse_and_read() {
        assert_eq!(
            PodField::parse("metadata.labels['app']"),
            Ok(PodField::Label("app".into()))
        );
        assert!(PodField::parse("metadata.labels").is_err());
        assert!(PodField::parse("spec.containers").is_err());
        let mut pod = pb::Pod::default();
        let meta = pod.metadata.get_or_insert_with(Default::default);
        meta.name = "web".into();
        meta.labels.insert("app".into(), "shop".into());
        pod.status.get_or_insert_with(Default::default).pod_ip = "10.0.0.5".into();
        assert_eq!(PodField::Name.value(&pod), "web");
        assert_eq!(PodField::Label("app".into()).value(&pod), "shop");
        assert_eq!(PodField::Label("none".into()).value(&pod), "");
        assert_eq!(PodField::PodIps.value(&pod), "10.0.0.5");
    }

    #[test]
    fn resources_are_written_in_their_divisor_rounded_up() {
        let mut c = pb::Container::default();
        let r = c.resources.get_or_insert_with(Default::default);
        r.limits.insert("cpu".into(), "1500m".into());
        r.limits.insert("memory".into(), "64Mi".into());
        let node: BTreeMap<String, String> = [("cpu", "4"), ("memory", "8Gi")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let one =
            |c: &pb::Container, f: ResourceField, d: &str| f.value(c, f.divisor(d).unwrap(), &node);
        assert_eq!(one(&c, ResourceField::LimitsCpu, ""), "2");
        assert_eq!(one(&c, ResourceField::LimitsCpu, "1m"), "1500");
        assert_eq!(one(&c, ResourceField::LimitsMemory, "1Mi"), "64");
        assert_eq!(one(&c, ResourceField::RequestsCpu, "1m"), "1500");
        c.resources = None;
        assert_eq!(one(&c, ResourceField::LimitsMemory, "1Gi"), "8");
        assert_eq!(one(&c, ResourceField::RequestsMemory, ""), "0");
        assert_eq!(one(&c, ResourceField::LimitsMemory, "0"), "8589934592");
        assert!(ResourceField::LimitsCpu.divisor("1Mi").is_err());
        assert!(ResourceField::LimitsMemory.divisor("2").is_err());
        assert!(ResourceField::parse("limits.ephemeral-storage")
            .unwrap_err()
            .contains("not supported"));
    }

    #[test]
    fn a_source_must_be_one_thing() {
        let mut c = pb::Container {
            name: "a".into(),
            ..Default::default()
        };
        c.env.push(pb::EnvVar {
            name: "X".into(),
            value: "v".into(),
            value_from: Some(pb::EnvVarSource {
                field_ref: Some(pb::ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                secret_key_ref: Some(pb::SecretKeySelector {
                    name: "s".into(),
                    key: "k".into(),
                    optional: None,
                }),
                ..Default::default()
            }),
        });
        c.env_from.push(pb::EnvFromSource::default());
        let mut errs = Errors::default();
        check_container_env(&mut errs, "c", &c, &["a"]);
        let text = errs.finish().unwrap_err().to_string();
        assert!(
            text.contains("c.env[0].valueFrom: may not be set"),
            "{text}"
        );
        assert!(text.contains("exactly one of fieldRef"), "{text}");
        assert!(
            text.contains("c.envFrom[0]: must set exactly one"),
            "{text}"
        );
    }
}
