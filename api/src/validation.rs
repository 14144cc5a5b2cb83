//! Admission: defaults filled in the way Kubernetes fills them, and checks
//! that name the field at fault and say what would be valid.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use base64::Engine;

use crate::names::is_dns_label;
use crate::names::is_dns_subdomain;
use crate::names::is_label_key;
use crate::names::is_label_value;
use crate::names::DNS_SUBDOMAIN_MAX;
use crate::pb;
use crate::quantity::Quantity;
use crate::selector::LabelSelector;

/// One thing wrong with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// Everything wrong with an object; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.reason)?;
        }
        Ok(())
    }
}

/// Collects errors under a field path.
#[derive(Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// Kubernetes' limit on all annotations of one object together.
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

const NAME_RULE_SUBDOMAIN: &str = "must be lowercase letters, digits, '-' and '.', start and end with a letter or digit, at most 253 characters (e.g. my-app.v1)";
const NAME_RULE_LABEL: &str = "must be lowercase letters, digits and '-', start and end with a letter or digit, at most 63 characters (e.g. my-app)";

const NAME_RULE_PATH_SEGMENT: &str = "must be printable ASCII without spaces, '/' or '%', not \".\" or \"..\", at most 253 characters (e.g. system:node-reader)";

/// How a kind's objects may be named, as Kubernetes' validation for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain: most kinds.
    Subdomain,
    /// A DNS-1123 label: namespaces, services and container names.
    Label,
    /// A path segment: RBAC's kinds (`system:node`).
    PathSegment,
}

fn is_path_segment(name: &str) -> bool {
    name != "."
        && name != ".."
        && name.len() <= DNS_SUBDOMAIN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'%')
}

pub fn check_name(errs: &mut Errors, field: &str, name: &str, rule: NameRule) {
    let (valid, explained) = match rule {
        NameRule::Subdomain => (is_dns_subdomain(name), NAME_RULE_SUBDOMAIN),
        NameRule::Label => (is_dns_label(name), NAME_RULE_LABEL),
        NameRule::PathSegment => (is_path_segment(name), NAME_RULE_PATH_SEGMENT),
    };
    if name.is_empty() {
        errs.add(field, "is required");
    } else if !valid {
        errs.add(field, format!("{name:?} {explained}"));
    }
}

pub fn check_labels(errs: &mut Errors, field: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        if !is_label_key(k) {
            errs.add(
                format!("{field}[{k:?}]"),
                "a label key is [prefix/]name: name up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit; prefix a DNS subdomain",
            );
        }
        if !is_label_value(v) {
            errs.add(
                format!("{field}[{k:?}]"),
                format!("label value {v:?} must be empty or up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
        }
    }
}

pub fn check_metadata(
    errs: &mut Errors,
    meta: Option<&pb::ObjectMeta>,
    namespaced: bool,
    name_rule: NameRule,
) {
    let Some(meta) = meta else {
        errs.add("metadata.name", "is required");
        return;
    };
    check_name(errs, "metadata.name", &meta.name, name_rule);
    if namespaced {
        if !meta.namespace.is_empty() && !is_dns_label(&meta.namespace) {
            errs.add(
                "metadata.namespace",
                format!("{:?} {NAME_RULE_LABEL}", meta.namespace),
            );
        }
    } else if !meta.namespace.is_empty() {
        errs.add(
            "metadata.namespace",
            "must be empty: this kind is not namespaced",
        );
    }
    check_labels(errs, "metadata.labels", &meta.labels);
    let mut bytes = 0;
    for k in meta.annotations.keys() {
        if !is_label_key(k) {
            errs.add(
                format!("metadata.annotations[{k:?}]"),
                "an annotation key is [prefix/]name, as a label key",
            );
        }
    }
    for (k, v) in &meta.annotations {
        bytes += k.len() + v.len();
    }
    if bytes > ANNOTATIONS_MAX_BYTES {
        errs.add(
            "metadata.annotations",
            format!("{bytes} bytes in total; at most {ANNOTATIONS_MAX_BYTES} are allowed"),
        );
    }
}

fn check_quantities(
    errs: &mut Errors,
    field: &str,
    map: &BTreeMap<String, String>,
) -> BTreeMap<String, Quantity> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        if !is_label_key(k) {
            errs.add(
                format!("{field}[{k:?}]"),
                "is not a valid resource name (e.g. cpu, memory)",
            );
            continue;
        }
        match Quantity::parse(v) {
            Ok(q) => {
                out.insert(k.clone(), q);
            }
            Err(e) => errs.add(format!("{field}.{k}"), e.to_string()),
        }
    }
    out
}

fn check_port(errs: &mut Errors, field: &str, port: i32) {
    if !(1..=65535).contains(&port) {
        errs.add(field, format!("{port} is not a port number (1-65535)"));
    }
}

/// A port given by number or by the name of a container port.
fn check_named_port(errs: &mut Errors, field: &str, port: &str) {
    match port.parse::<i32>() {
        Ok(n) => check_port(errs, field, n),
        Err(_) if is_dns_label(port) && port.len() <= 15 => {}
        Err(_) => errs.add(
            field,
            format!("{port:?} is neither a port number nor a port name"),
        ),
    }
}

fn check_protocol(errs: &mut Errors, field: &str, protocol: &str) {
    if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
        errs.add(field, format!("{protocol:?} must be TCP, UDP or SCTP"));
    }
}

fn one_of(errs: &mut Errors, field: &str, value: &str, allowed: &[&str]) {
    if !allowed.contains(&value) {
        errs.add(
            field,
            format!("{value:?} must be one of {}", allowed.join(", ")),
        );
    }
}

// ------------------------------------------------------------------ defaults

fn default_str(s: &mut String, value: &str) {
    if s.is_empty() {
        *s = value.to_string();
    }
}

fn default_probe(p: &mut pb::Probe) {
    if p.timeout_seconds == 0 {
        p.timeout_seconds = 1;
    }
    if p.period_seconds == 0 {
        p.period_seconds = 10;
    }
    if p.success_threshold == 0 {
        p.success_threshold = 1;
    }
    if p.failure_threshold == 0 {
        p.failure_threshold = 3;
    }
    if let Some(h) = &mut p.http_get {
        default_http_get(h);
    }
}

fn default_http_get(h: &mut pb::HttpGetAction) {
    default_str(&mut h.path, "/");
    default_str(&mut h.scheme, "HTTP");
}

pub fn default_pod_spec(spec: &mut pb::PodSpec) {
    default_str(&mut spec.restart_policy, "Always");
    default_str(&mut spec.dns_policy, "ClusterFirst");
    default_str(&mut spec.scheduler_name, "default-scheduler");
    spec.termination_grace_period_seconds.get_or_insert(30);
    for c in spec.init_containers.iter_mut().chain(&mut spec.containers) {
        for p in &mut c.ports {
            default_str(&mut p.protocol, "TCP");
        }
        for p in [
            &mut c.liveness_probe,
            &mut c.readiness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            default_probe(p);
        }
        for from in c.env.iter_mut().filter_map(|e| e.value_from.as_mut()) {
            if let Some(f) = &mut from.field_ref {
                default_str(&mut f.api_version, "v1");
            }
            if let Some(r) = &mut from.resource_field_ref {
                default_str(&mut r.divisor, "1");
            }
        }
        let hooks = c
            .lifecycle
            .iter_mut()
            .flat_map(|l| [&mut l.post_start, &mut l.pre_stop]);
        hooks
            .flatten()
            .filter_map(|h| h.http_get.as_mut())
            .for_each(default_http_get);
        default_str(&mut c.termination_message_path, "/dev/termination-log");
        default_str(&mut c.termination_message_policy, "File");
    }
    for t in &mut spec.tolerations {
        default_str(&mut t.operator, "Equal");
    }
}

pub fn default_deployment_spec(spec: &mut pb::DeploymentSpec) {
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_default();
    default_str(&mut strategy.r#type, "RollingUpdate");
    if strategy.r#type == "RollingUpdate" {
        let ru = strategy.rolling_update.get_or_insert_default();
        default_str(&mut ru.max_surge, "25%");
        default_str(&mut ru.max_unavailable, "25%");
    }
    if let Some(t) = &mut spec.template {
        default_pod_spec(t.spec.get_or_insert_default());
    }
}

pub fn default_service_spec(spec: &mut pb::ServiceSpec) {
    default_str(&mut spec.r#type, "ClusterIP");
    default_str(&mut spec.session_affinity, "None");
    for p in &mut spec.ports {
        default_str(&mut p.protocol, "TCP");
        if p.target_port.is_empty() {
            p.target_port = p.port.to_string();
        }
    }
}

// ---------------------------------------------------------------- validation

/// A probe's or hook's httpGet, at `field.httpGet`.
fn check_http_get(errs: &mut Errors, field: &str, h: &pb::HttpGetAction) {
    check_named_port(errs, &format!("{field}.httpGet.port"), &h.port);
    one_of(
        errs,
        &format!("{field}.httpGet.scheme"),
        &h.scheme,
        &["HTTP", "HTTPS"],
    );
}

fn check_probe(errs: &mut Errors, field: &str, p: &pb::Probe) {
    let handlers = [
        p.exec.is_some(),
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
    ];
    if handlers.iter().filter(|h| **h).count() != 1 {
        errs.add(field, "needs exactly one of exec, httpGet or tcpSocket");
    }
    if let Some(e) = &p.exec {
        if e.command.is_empty() {
            errs.add(format!("{field}.exec.command"), "is required");
        }
    }
    if let Some(h) = &p.http_get {
        check_http_get(errs, field, h);
    }
    if let Some(t) = &p.tcp_socket {
        check_named_port(errs, &format!("{field}.tcpSocket.port"), &t.port);
    }
    for (name, v) in [
        ("initialDelaySeconds", p.initial_delay_seconds),
        ("timeoutSeconds", p.timeout_seconds),
        ("periodSeconds", p.period_seconds),
        ("successThreshold", p.success_threshold),
        ("failureThreshold", p.failure_threshold),
    ] {
        if v < 0 {
            errs.add(format!("{field}.{name}"), "must not be negative");
        }
    }
}

/// A lifecycle hook: one handler; a sleep ends within the grace period, as
/// Kubernetes validates it.
fn check_hook(errs: &mut Errors, field: &str, h: &pb::LifecycleHandler, grace: i64) {
    let handlers = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()];
    if handlers.iter().filter(|h| **h).count() != 1 {
        errs.add(field, "needs exactly one of exec, httpGet or sleep");
    }
    if h.exec.as_ref().is_some_and(|e| e.command.is_empty()) {
        errs.add(format!("{field}.exec.command"), "is required");
    }
    if let Some(g) = &h.http_get {
        check_http_get(errs, field, g);
    }
    if let Some(s) = &h.sleep {
        if !(0..=grace).contains(&s.seconds) {
            errs.add(
                format!("{field}.sleep.seconds"),
                format!(
                    "{} must be from 0 to terminationGracePeriodSeconds ({grace})",
                    s.seconds
                ),
            );
        }
    }
}

fn check_lifecycle(errs: &mut Errors, field: &str, l: &pb::Lifecycle, grace: i64) {
    let hooks = [("postStart", &l.post_start), ("preStop", &l.pre_stop)];
    for (name, h) in hooks {
        if let Some(h) = h {
            check_hook(errs, &format!("{field}.{name}"), h, grace);
        }
    }
}

fn check_container(errs: &mut Errors, field: &str, c: &pb::Container) {
    check_name(errs, &format!("{field}.name"), &c.name, NameRule::Label);
    if c.image.is_empty() && c.command.is_empty() {
        errs.add(
            field,
            "needs an image (docker runtime) or a command (process runtime)",
        );
    }
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().enumerate() {
        let f = format!("{field}.ports[{i}]");
        check_port(errs, &format!("{f}.containerPort"), p.container_port);
        check_protocol(errs, &format!("{f}.protocol"), &p.protocol);
        if p.host_port != 0 {
            check_port(errs, &format!("{f}.hostPort"), p.host_port);
        }
        if !p.name.is_empty() && !port_names.insert(p.name.clone()) {
            errs.add(
                format!("{f}.name"),
                format!("{:?} is used by another port", p.name),
            );
        }
    }
    if let Some(r) = &c.resources {
        let limits = check_quantities(errs, &format!("{field}.resources.limits"), &r.limits);
        let requests = check_quantities(errs, &format!("{field}.resources.requests"), &r.requests);
        for (k, req) in &requests {
            if let Some(lim) = limits.get(k) {
                if req > lim {
                    errs.add(
                        format!("{field}.resources.requests.{k}"),
                        format!("{req} is more than the limit {lim}: a request must not exceed its limit"),
                    );
                }
            }
        }
    }
    for (name, p) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if let Some(p) = p {
            check_probe(errs, &format!("{field}.{name}"), p);
            if name != "readinessProbe" && p.success_threshold > 1 {
                errs.add(
                    format!("{field}.{name}.successThreshold"),
                    "must be 1: one success is what a liveness or startup probe needs",
                );
            }
        }
    }
    if !c.image_pull_policy.is_empty() {
        one_of(
            errs,
            &format!("{field}.imagePullPolicy"),
            &c.image_pull_policy,
            &["Always", "IfNotPresent", "Never"],
        );
    }
}

fn check_node_selector_term(errs: &mut Errors, field: &str, t: &pb::NodeSelectorTerm) {
    for (i, e) in t
        .match_expressions
        .iter()
        .chain(&t.match_fields)
        .enumerate()
    {
        let f = format!("{field}.matchExpressions[{i}]");
        if !is_label_key(&e.key) {
            errs.add(
                format!("{f}.key"),
                format!("{:?} is not a valid label key", e.key),
            );
        }
        match e.operator.as_str() {
            "In" | "NotIn" if e.values.is_empty() => errs.add(
                format!("{f}.values"),
                "In and NotIn need at least one value",
            ),
            "Exists" | "DoesNotExist" if !e.values.is_empty() => errs.add(
                format!("{f}.values"),
                "Exists and DoesNotExist take no values",
            ),
            "Gt" | "Lt" if e.values.len() != 1 || e.values[0].parse::<i64>().is_err() => {
                errs.add(format!("{f}.values"), "Gt and Lt take one integer value")
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
            other => errs.add(
                format!("{f}.operator"),
                format!("{other:?} must be In, NotIn, Exists, DoesNotExist, Gt or Lt"),
            ),
        }
    }
}

pub fn check_pod_spec(errs: &mut Errors, field: &str, spec: Option<&pb::PodSpec>) {
    let Some(spec) = spec else {
        errs.add(field, "is required");
        return;
    };
    if spec.containers.is_empty() {
        errs.add(
            format!("{field}.containers"),
            "at least one container is required",
        );
    }
    let mut names = BTreeSet::new();
    let container_names: Vec<&str> = spec
        .init_containers
        .iter()
        .chain(&spec.containers)
        .map(|c| c.name.as_str())
        .collect();
    let init = spec.init_containers.iter().enumerate();
    let listed = init
        .map(|(i, c)| (format!("{field}.initContainers[{i}]"), c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("{field}.containers[{i}]"), c)),
        );
    for (f, c) in listed {
        check_container(errs, &f, c);
        crate::env::check_container_env(errs, &f, c, &container_names);
        crate::volumes::check_mounts(errs, &f, c, &spec.volumes);
        if let Some(sc) = &c.security_context {
            crate::security_context::check_container(errs, &format!("{f}.securityContext"), sc);
        }
        if let Some(l) = &c.lifecycle {
            let grace = spec.termination_grace_period_seconds.unwrap_or(30);
            check_lifecycle(errs, &format!("{f}.lifecycle"), l, grace);
        }
        if !names.insert(c.name.clone()) {
            errs.add(
                format!("{f}.name"),
                format!("{:?} is used by another container", c.name),
            );
        }
    }
    crate::volumes::check_volumes(errs, field, spec);
    if let Some(sc) = &spec.security_context {
        crate::security_context::check_pod(errs, &format!("{field}.securityContext"), sc);
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if !c.restart_policy.is_empty() {
            errs.add(
                format!("{field}.containers[{i}].restartPolicy"),
                "only an init container takes one (Always, making it a sidecar): a container restarts as the pod's restartPolicy says",
            );
        }
    }
    for (i, c) in spec.init_containers.iter().enumerate() {
        let f = format!("{field}.initContainers[{i}]");
        match c.restart_policy.as_str() {
            "" => {}
            "Always" => continue,
            other => errs.add(
                format!("{f}.restartPolicy"),
                format!("{other:?} is not supported: Always (a sidecar) is the only value"),
            ),
        }
        let probes = [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ];
        for (name, _) in probes.into_iter().filter(|(_, p)| p.is_some()) {
            errs.add(
                format!("{f}.{name}"),
                "an init container runs to completion and takes no probes (a sidecar, restartPolicy Always, does)",
            );
        }
        if c.lifecycle.is_some() {
            errs.add(
                format!("{f}.lifecycle"),
                "an init container runs to completion and takes no lifecycle hooks (a sidecar, restartPolicy Always, does)",
            );
        }
    }
    one_of(
        errs,
        &format!("{field}.restartPolicy"),
        &spec.restart_policy,
        &["Always", "OnFailure", "Never"],
    );
    one_of(
        errs,
        &format!("{field}.dnsPolicy"),
        &spec.dns_policy,
        &["ClusterFirst", "Default", "None", "ClusterFirstWithHostNet"],
    );
    if !spec.node_name.is_empty() && !is_dns_subdomain(&spec.node_name) {
        errs.add(
            format!("{field}.nodeName"),
            format!("{:?} {NAME_RULE_SUBDOMAIN}", spec.node_name),
        );
    }
    if spec.termination_grace_period_seconds.is_some_and(|s| s < 0) {
        errs.add(
            format!("{field}.terminationGracePeriodSeconds"),
            "must not be negative",
        );
    }
    check_labels(errs, &format!("{field}.nodeSelector"), &spec.node_selector);
    for (i, t) in spec.tolerations.iter().enumerate() {
        let f = format!("{field}.tolerations[{i}]");
        one_of(
            errs,
            &format!("{f}.operator"),
            &t.operator,
            &["Equal", "Exists"],
        );
        if t.operator == "Exists" && !t.value.is_empty() {
            errs.add(
                format!("{f}.value"),
                "must be empty when the operator is Exists",
            );
        }
        if !t.effect.is_empty() {
            one_of(
                errs,
                &format!("{f}.effect"),
                &t.effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
        }
        if t.key.is_empty() && t.operator != "Exists" {
            errs.add(format!("{f}.key"), "an empty key needs the operator Exists");
        }
    }
    if let Some(a) = &spec.affinity {
        if let Some(na) = &a.node_affinity {
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                for (i, t) in req.node_selector_terms.iter().enumerate() {
                    check_node_selector_term(errs, &format!("{field}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]"), t);
                }
            }
        }
        if let Some(pa) = &a.pod_anti_affinity {
            for (i, t) in pa
                .required_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let f = format!("{field}.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[{i}]");
                if t.topology_key.is_empty() {
                    errs.add(
                        format!("{f}.topologyKey"),
                        "is required (e.g. kubernetes.io/hostname)",
                    );
                }
                if let Some(sel) = &t.label_selector {
                    if let Err(e) = LabelSelector::from_proto(sel) {
                        errs.add(format!("{f}.labelSelector"), e.to_string());
                    }
                }
            }
        }
    }
}

pub fn check_deployment_spec(errs: &mut Errors, spec: Option<&pb::DeploymentSpec>) {
    let Some(spec) = spec else {
        errs.add("spec", "is required");
        return;
    };
    if spec.replicas.is_some_and(|r| r < 0) {
        errs.add("spec.replicas", "must not be negative");
    }
    let template = spec.template.as_ref();
    let template_labels = template
        .and_then(|t| t.metadata.as_ref())
        .map(|m| m.labels.clone())
        .unwrap_or_default();
    match &spec.selector {
        None => errs.add(
            "spec.selector",
            "is required (e.g. matchLabels: {app: web})",
        ),
        Some(sel) if sel.match_labels.is_empty() && sel.match_expressions.is_empty() => {
            errs.add("spec.selector", "must not be empty")
        }
        Some(sel) => match LabelSelector::from_proto(sel) {
            Err(e) => errs.add("spec.selector", e.to_string()),
            Ok(s) if !s.matches(&template_labels) => errs.add(
                "spec.template.metadata.labels",
                "must match spec.selector, or the deployment would never see its own pods",
            ),
            Ok(_) => {}
        },
    }
    match template {
        None => errs.add("spec.template", "is required"),
        Some(t) => {
            if let Some(m) = &t.metadata {
                check_labels(errs, "spec.template.metadata.labels", &m.labels);
            }
            check_pod_spec(errs, "spec.template.spec", t.spec.as_ref());
            if let Some(s) = &t.spec {
                if s.restart_policy != "Always" {
                    errs.add(
                        "spec.template.spec.restartPolicy",
                        "a deployment's pods must use Always",
                    );
                }
            }
        }
    }
    if let Some(s) = &spec.strategy {
        one_of(
            errs,
            "spec.strategy.type",
            &s.r#type,
            &["RollingUpdate", "Recreate"],
        );
        if let Some(ru) = &s.rolling_update {
            for (name, v) in [
                ("maxSurge", &ru.max_surge),
                ("maxUnavailable", &ru.max_unavailable),
            ] {
                let ok = match v.strip_suffix('%') {
                    Some(p) => p.parse::<u32>().is_ok_and(|p| p <= 100),
                    None => v.parse::<u32>().is_ok(),
                };
                if !ok {
                    errs.add(
                        format!("spec.strategy.rollingUpdate.{name}"),
                        format!("{v:?} must be a count or a percentage (e.g. 1 or 25%)"),
                    );
                }
            }
        }
    }
}

pub fn check_service_spec(errs: &mut Errors, spec: Option<&pb::ServiceSpec>) {
    let Some(spec) = spec else {
        errs.add("spec", "is required");
        return;
    };
    one_of(errs, "spec.type", &spec.r#type, &["ClusterIP", "NodePort"]);
    one_of(
        errs,
        "spec.sessionAffinity",
        &spec.session_affinity,
        &["None", "ClientIP"],
    );
    if !spec.cluster_ip.is_empty()
        && spec.cluster_ip != "None"
        && spec.cluster_ip.parse::<std::net::Ipv4Addr>().is_err()
    {
        errs.add(
            "spec.clusterIP",
            format!(
                "{:?} must be an IPv4 address, None (headless) or empty",
                spec.cluster_ip
            ),
        );
    }
    check_labels(errs, "spec.selector", &spec.selector);
    let mut names = BTreeSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        check_port(errs, &format!("{f}.port"), p.port);
        check_protocol(errs, &format!("{f}.protocol"), &p.protocol);
        check_named_port(errs, &format!("{f}.targetPort"), &p.target_port);
        if spec.ports.len() > 1 && p.name.is_empty() {
            errs.add(
                format!("{f}.name"),
                "is required when a service has more than one port",
            );
        }
        if !p.name.is_empty() && !names.insert(p.name.clone()) {
            errs.add(
                format!("{f}.name"),
                format!("{:?} is used by another port", p.name),
            );
        }
    }
}

pub fn check_node(errs: &mut Errors, node: &pb::Node) {
    if let Some(spec) = &node.spec {
        for (i, t) in spec.taints.iter().enumerate() {
            let f = format!("spec.taints[{i}]");
            if !is_label_key(&t.key) {
                errs.add(
                    format!("{f}.key"),
                    format!("{:?} is not a valid taint key", t.key),
                );
            }
            one_of(
                errs,
                &format!("{f}.effect"),
                &t.effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
        }
        if !spec.pod_cidr.is_empty() && !is_cidr(&spec.pod_cidr) {
            errs.add(
                "spec.podCIDR",
                format!(
                    "{:?} is not an IPv4 CIDR such as 10.244.1.0/24",
                    spec.pod_cidr
                ),
            );
        }
    }
    if let Some(status) = &node.status {
        check_quantities(errs, "status.capacity", &status.capacity);
        check_quantities(errs, "status.allocatable", &status.allocatable);
    }
}

fn is_cidr(s: &str) -> bool {
    s.split_once('/').is_some_and(|(ip, len)| {
        ip.parse::<std::net::Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32)
    })
}

/// ConfigMap and Secret keys name files in a volume: letters, digits,
/// '-', '_' and '.', but not `.` or `..`.
pub(crate) fn check_data_key(errs: &mut Errors, field: &str, key: &str) {
    let ok = !key.is_empty()
        && key.len() <= DNS_SUBDOMAIN_MAX
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        errs.add(
            format!("{field}[{key:?}]"),
            "a key is letters, digits, '-', '_' or '.' (at most 253, and not '.' or '..')",
        );
    }
}

fn decode_base64(value: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(value).ok()
}

pub fn check_config_map(errs: &mut Errors, cm: &pb::ConfigMap) {
    for k in cm.data.keys() {
        check_data_key(errs, "data", k);
    }
    for (k, v) in &cm.binary_data {
        check_data_key(errs, "binaryData", k);
        if cm.data.contains_key(k) {
            errs.add(format!("binaryData[{k:?}]"), "the key is also in data");
        }
        if decode_base64(v).is_none() {
            errs.add(format!("binaryData[{k:?}]"), "is not valid base64");
        }
    }
}

pub const SECRET_OPAQUE: &str = "Opaque";

/// stringData is written into data (winning over a data key of the same
/// name, as in Kubernetes) and never kept; the type defaults to Opaque.
pub fn default_secret(secret: &mut pb::Secret) {
    for (k, v) in std::mem::take(&mut secret.string_data) {
        secret
            .data
            .insert(k, base64::engine::general_purpose::STANDARD.encode(v));
    }
    if secret.r#type.is_empty() {
        secret.r#type = SECRET_OPAQUE.into();
    }
}

/// The keys each of Kubernetes' Secret types must hold (any one of them
/// for basic-auth), and those whose value must be JSON.
fn required_secret_keys(kind: &str) -> Option<(&'static [&'static str], bool)> {
    Some(match kind {
        "kubernetes.io/dockercfg" => (&[".dockercfg"], true),
        "kubernetes.io/dockerconfigjson" => (&[".dockerconfigjson"], true),
        "kubernetes.io/basic-auth" => (&["username", "password"], false),
        "kubernetes.io/ssh-auth" => (&["ssh-privatekey"], false),
        "kubernetes.io/tls" => (&["tls.crt", "tls.key"], false),
        _ => return None,
    })
}

pub fn check_secret(errs: &mut Errors, secret: &pb::Secret) {
    for (k, v) in &secret.data {
        check_data_key(errs, "data", k);
        if decode_base64(v).is_none() {
            errs.add(
                format!("data[{k:?}]"),
                "is not valid base64 (put plain text in stringData instead)",
            );
        }
    }
    let kind = secret.r#type.as_str();
    match kind {
        "kubernetes.io/service-account-token" => errs.add(
            "type",
            "kubernetes.io/service-account-token is not supported: Berth issues no service-account tokens; authenticate with certificates (`berth user create`) and use type Opaque for other data",
        ),
        "bootstrap.kubernetes.io/token" => errs.add(
            "type",
            "bootstrap.kubernetes.io/token is not supported: nodes join Berth with `berth token create --role agent`",
        ),
        _ => {}
    }
    let Some((keys, json)) = required_secret_keys(kind) else {
        return;
    };
    if kind == "kubernetes.io/basic-auth" {
        if !keys.iter().any(|k| secret.data.contains_key(*k)) {
            errs.add(
                "data",
                format!("type {kind} needs a username or a password key"),
            );
        }
        return;
    }
    for key in keys {
        match secret.data.get(*key).map(|v| decode_base64(v)) {
            None => errs.add(
                format!("data[{key:?}]"),
                format!("required for a Secret of type {kind}"),
            ),
            Some(Some(bytes))
                if json && serde_json::from_slice::<serde_json::Value>(&bytes).is_err() =>
            {
                errs.add(format!("data[{key:?}]"), "is not JSON")
            }
            Some(_) => {}
        }
    }
}

pub fn check_lease(errs: &mut Errors, lease: &pb::Lease) {
    if let Some(spec) = &lease.spec {
        if spec.lease_duration_seconds.is_some_and(|d| d < 0) {
            errs.add("spec.leaseDurationSeconds", "must not be negative");
        }
    }
}

pub fn check_endpoints(errs: &mut Errors, ep: &pb::Endpoints) {
    for (i, s) in ep.subsets.iter().enumerate() {
        for (j, a) in s.addresses.iter().chain(&s.not_ready_addresses).enumerate() {
            if a.ip.parse::<std::net::IpAddr>().is_err() {
                errs.add(
                    format!("subsets[{i}].addresses[{j}].ip"),
                    format!("{:?} is not an IP address", a.ip),
                );
            }
        }
        for (j, p) in s.ports.iter().enumerate() {
            check_port(errs, &format!("subsets[{i}].ports[{j}].port"), p.port);
        }
    }
}

/// The API group of RBAC's kinds, and of User and Group subjects.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

pub fn check_policy_rules(errs: &mut Errors, rules: &[pb::PolicyRule]) {
    for (i, r) in rules.iter().enumerate() {
        let field = |f: &str| format!("rules[{i}].{f}");
        if r.verbs.is_empty() {
            errs.add(field("verbs"), "needs at least one verb (get, list, watch, create, update, patch, delete, or \"*\")");
        }
        if r.api_groups.is_empty() {
            errs.add(field("apiGroups"), "needs at least one API group (\"\" is the core group of pods, nodes and services; \"*\" is every group)");
        }
        if r.resources.is_empty() {
            errs.add(
                field("resources"),
                "needs at least one resource (e.g. pods, deployments, pods/status, or \"*\")",
            );
        }
        let lists = [
            ("verbs", &r.verbs),
            ("resources", &r.resources),
            ("resourceNames", &r.resource_names),
        ];
        for (name, list) in lists {
            for (j, item) in list.iter().enumerate() {
                if item.is_empty() || item.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    errs.add(
                        format!("rules[{i}].{name}[{j}]"),
                        format!("{item:?} must be non-empty, without spaces"),
                    );
                }
            }
        }
    }
}

/// Kubernetes' defaults: a User or Group subject is in RBAC's API group.
pub fn default_subjects(subjects: &mut [pb::Subject]) {
    for s in subjects {
        if s.api_group.is_empty() && matches!(s.kind.as_str(), "User" | "Group") {
            s.api_group = RBAC_GROUP.into();
        }
    }
}

pub fn check_binding(
    errs: &mut Errors,
    namespaced: bool,
    subjects: &[pb::Subject],
    role_ref: Option<&pb::RoleRef>,
) {
    match role_ref {
        None => errs.add(
            "roleRef",
            "is required (apiGroup: rbac.authorization.k8s.io, kind: ClusterRole or Role, name)",
        ),
        Some(r) => {
            if r.api_group != RBAC_GROUP {
                errs.add("roleRef.apiGroup", format!("must be {RBAC_GROUP:?}"));
            }
            match r.kind.as_str() {
                "ClusterRole" => {}
                "Role" if namespaced => {}
                "Role" => errs.add(
                    "roleRef.kind",
                    "a ClusterRoleBinding grants a ClusterRole, not a Role",
                ),
                other => errs.add(
                    "roleRef.kind",
                    format!("{other:?} must be ClusterRole or Role"),
                ),
            }
            check_name(errs, "roleRef.name", &r.name, NameRule::PathSegment);
        }
    }
    for (i, s) in subjects.iter().enumerate() {
        let field = |f: &str| format!("subjects[{i}].{f}");
        match s.kind.as_str() {
            "User" | "Group" => {
                if s.api_group != RBAC_GROUP {
                    errs.add(
                        field("apiGroup"),
                        format!("a {} subject is in {RBAC_GROUP:?}", s.kind),
                    );
                }
                if s.name.is_empty() {
                    errs.add(field("name"), "is required");
                }
                if !s.namespace.is_empty() {
                    errs.add(
                        field("namespace"),
                        format!("must be empty for a {} subject", s.kind),
                    );
                }
            }
            "ServiceAccount" => {
                if !s.api_group.is_empty() {
                    errs.add(
                        field("apiGroup"),
                        "a ServiceAccount subject is in the core group \"\"",
                    );
                }
                check_name(errs, &field("name"), &s.name, NameRule::Subdomain);
                if s.namespace.is_empty() && !namespaced {
                    errs.add(
                        field("namespace"),
                        "is required for a ServiceAccount in a ClusterRoleBinding",
                    );
                }
            }
            other => errs.add(
                field("kind"),
                format!("{other:?} must be User, Group or ServiceAccount"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_subdomain("web-1.example"));
        assert!(!is_dns_subdomain("Web"));
        assert!(!is_dns_subdomain("-web"));
        assert!(!is_dns_subdomain(&"a".repeat(254)));
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label("web.1"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("Tier_1"));
        assert!(!is_label_key("/x"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(!is_label_value("has space"));
    }

    #[test]
    fn a_request_over_its_limit_is_refused() {
        let mut errs = Errors::default();
        let c = pb::Container {
            name: "c".into(),
            command: vec!["sleep".into()],
            resources: Some(pb::ResourceRequirements {
                limits: [("cpu".to_string(), "500m".to_string())].into(),
                requests: [("cpu".to_string(), "1".to_string())].into(),
            }),
            ..Default::default()
        };
        check_container(&mut errs, "c", &c);
        let e = errs.finish().unwrap_err();
        assert!(e.to_string().contains("c.resources.requests.cpu"), "{e}");
    }

    fn pod_spec_errors(spec: &str) -> String {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{spec}");
        let mut spec = match crate::manifest::parse(&text).map(|mut o| o.pop()) {
            Ok(Some(crate::kinds::AnyObject::Pod(p))) => p.spec.unwrap(),
            other => return format!("{other:?}"),
        };
        default_pod_spec(&mut spec);
        let mut errs = Errors::default();
        check_pod_spec(&mut errs, "spec", Some(&spec));
        errs.finish()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn hooks_take_one_handler_and_only_init_containers_take_a_restart_policy() {
        let good = "  terminationGracePeriodSeconds: 10\n  containers:\n  - name: a\n    command: [x]\n    lifecycle:\n      postStart: {exec: {command: [touch, /ready]}}\n      preStop: {sleep: {seconds: 5}}\n";
        assert_eq!(pod_spec_errors(good), "");
        let http = "  containers:\n  - name: a\n    command: [x]\n    lifecycle: {preStop: {httpGet: {port: 8080}}}\n";
        assert_eq!(pod_spec_errors(http), "");
        let sidecar = "  initContainers:\n  - name: proxy\n    command: [x]\n    restartPolicy: Always\n    readinessProbe: {exec: {command: [x]}}\n    lifecycle: {preStop: {sleep: {seconds: 1}}}\n  containers:\n  - name: a\n    command: [x]\n";
        assert_eq!(
            pod_spec_errors(sidecar),
            "",
            "a sidecar takes probes and hooks"
        );
        for (spec, wanted) in [
            (
                "  containers:\n  - name: a\n    command: [x]\n    lifecycle: {preStop: {}}\n",
                "spec.containers[0].lifecycle.preStop: needs exactly one of exec, httpGet or sleep",
            ),
            (
                "  terminationGracePeriodSeconds: 10\n  containers:\n  - name: a\n    command: [x]\n    lifecycle: {preStop: {sleep: {seconds: 11}}}\n",
                "spec.containers[0].lifecycle.preStop.sleep.seconds: 11 must be from 0 to terminationGracePeriodSeconds (10)",
            ),
            (
                "  containers:\n  - name: a\n    command: [x]\n    lifecycle: {postStart: {tcpSocket: {port: 80}}}\n",
                "tcpSocket",
            ),
            (
                "  initContainers:\n  - name: i\n    command: [x]\n    lifecycle: {postStart: {exec: {command: [x]}}}\n  containers:\n  - name: a\n    command: [x]\n",
                "spec.initContainers[0].lifecycle: an init container runs to completion",
            ),
            (
                "  initContainers:\n  - name: i\n    command: [x]\n    restartPolicy: OnFailure\n  containers:\n  - name: a\n    command: [x]\n    restartPolicy: Always\n",
                "spec.containers[0].restartPolicy: only an init container takes one",
            ),
            (
                "  initContainers:\n  - name: i\n    command: [x]\n    restartPolicy: OnFailure\n  containers:\n  - name: a\n    command: [x]\n",
                "spec.initContainers[0].restartPolicy: \"OnFailure\" is not supported: Always (a sidecar) is the only value",
            ),
        ] {
            let errors = pod_spec_errors(spec);
            assert!(errors.contains(wanted), "{wanted:?} not in {errors:?}");
        }
    }
}
