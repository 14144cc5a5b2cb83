//! Builders of the API objects tests create: each starts from the smallest
//! valid object of its kind (in namespace `default`), and a test sets only
//! what it is about.
//!
//! ```
//! use berth_testkit::objects::{container, deployment, pod};
//! let web = deployment("web").replicas(3).container(container("web").image("busybox")).build();
//! let p = pod("p").namespace("shop").restart_policy("Never").build();
//! ```

use std::collections::BTreeMap;

use berth_api::pb;
use berth_api::Object;

fn pairs(items: &[(&str, &str)]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn meta(name: &str, namespace: &str) -> Option<pb::ObjectMeta> {
    Some(pb::ObjectMeta {
        name: name.into(),
        namespace: namespace.into(),
        ..Default::default()
    })
}

pub fn get_req(namespace: &str, name: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: namespace.into(),
        name: name.into(),
        serializable: false,
    }
}

pub fn delete_req(namespace: &str, name: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        namespace: namespace.into(),
        name: name.into(),
        ..Default::default()
    }
}

/// Pods of `namespace` whose labels match `selector`.
pub fn list_req(namespace: &str, selector: &str) -> pb::ListRequest {
    pb::ListRequest {
        namespace: namespace.into(),
        label_selector: selector.into(),
        ..Default::default()
    }
}

/// The builder methods every namespaced kind shares.
macro_rules! meta_setters {
    ($builder:ident, $built:ty) => {
        impl $builder {
            pub fn namespace(mut self, namespace: &str) -> Self {
                self.0.meta_mut().namespace = namespace.into();
                self
            }

            pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
                self.0.meta_mut().labels.extend(pairs(labels));
                self
            }

            pub fn build(self) -> $built {
                self.0
            }
        }
    };
}

/// A container `name` that sleeps for an hour, with no image (the process
/// runtime runs the host's programs).
pub fn container(name: &str) -> ContainerBuilder {
    ContainerBuilder(pb::Container {
        name: name.into(),
        command: vec!["sleep".into(), "3600".into()],
        ..Default::default()
    })
}

pub struct ContainerBuilder(pb::Container);

impl ContainerBuilder {
    pub fn image(mut self, image: &str) -> Self {
        self.0.image = image.into();
        self
    }

    pub fn command(mut self, argv: &[&str]) -> Self {
        self.0.command = argv.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `sh -c script`.
    pub fn shell(self, script: &str) -> Self {
        self.command(&["/bin/sh", "-c", script])
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.0.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.0.env.push(pb::EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        });
        self
    }

    /// Variable `name` from `source` (`valueFrom`).
    pub fn env_from_source(mut self, name: &str, source: pb::EnvVarSource) -> Self {
        self.0.env.push(pb::EnvVar {
            name: name.into(),
            value_from: Some(source),
            ..Default::default()
        });
        self
    }

    /// Every key of `source` as a variable named `prefix` + key (`envFrom`).
    pub fn env_from(mut self, prefix: &str, source: EnvFrom) -> Self {
        let mut from = pb::EnvFromSource {
            prefix: prefix.into(),
            ..Default::default()
        };
        match source {
            EnvFrom::ConfigMap(name) => {
                from.config_map_ref = Some(pb::ConfigMapEnvSource {
                    name: name.into(),
                    optional: None,
                })
            }
            EnvFrom::Secret(name) => {
                from.secret_ref = Some(pb::SecretEnvSource {
                    name: name.into(),
                    optional: None,
                })
            }
        }
        self.0.env_from.push(from);
        self
    }

    pub fn requests(mut self, requests: &[(&str, &str)]) -> Self {
        let r = self.0.resources.get_or_insert_default();
        r.requests.extend(pairs(requests));
        self
    }

    pub fn limits(mut self, limits: &[(&str, &str)]) -> Self {
        let r = self.0.resources.get_or_insert_default();
        r.limits.extend(pairs(limits));
        self
    }

    /// A port it serves on, `name` ("" for none).
    pub fn port(mut self, name: &str, container_port: i32) -> Self {
        self.0.ports.push(pb::ContainerPort {
            name: name.into(),
            container_port,
            ..Default::default()
        });
        self
    }

    /// Ready while `argv` exits 0, checked every `period_seconds`.
    pub fn readiness_exec(mut self, argv: &[&str], period_seconds: i32) -> Self {
        self.0.readiness_probe = Some(pb::Probe {
            exec: Some(pb::ExecAction {
                command: argv.iter().map(|s| s.to_string()).collect(),
            }),
            period_seconds,
            ..Default::default()
        });
        self
    }

    /// Started once `argv` exits 0, checked every second, failed after
    /// `failure_threshold` checks.
    pub fn startup_exec(mut self, argv: &[&str], failure_threshold: i32) -> Self {
        self.0.startup_probe = Some(exec_probe(argv, failure_threshold));
        self
    }

    /// Alive while `argv` exits 0, checked every second, failed after
    /// `failure_threshold` checks.
    pub fn liveness_exec(mut self, argv: &[&str], failure_threshold: i32) -> Self {
        self.0.liveness_probe = Some(exec_probe(argv, failure_threshold));
        self
    }

    pub fn build(self) -> pb::Container {
        self.0
    }
}

fn exec_probe(argv: &[&str], failure_threshold: i32) -> pb::Probe {
    pb::Probe {
        exec: Some(pb::ExecAction {
            command: argv.iter().map(|s| s.to_string()).collect(),
        }),
        period_seconds: 1,
        failure_threshold,
        ..Default::default()
    }
}

impl From<ContainerBuilder> for pb::Container {
    fn from(b: ContainerBuilder) -> Self {
        b.0
    }
}

/// What `envFrom` reads.
pub enum EnvFrom<'a> {
    ConfigMap(&'a str),
    Secret(&'a str),
}

/// `valueFrom` a ConfigMap's key.
pub fn config_map_key(name: &str, key: &str) -> pb::EnvVarSource {
    pb::EnvVarSource {
        config_map_key_ref: Some(pb::ConfigMapKeySelector {
            name: name.into(),
            key: key.into(),
            optional: None,
        }),
        ..Default::default()
    }
}

/// `valueFrom` a Secret's key.
pub fn secret_key(name: &str, key: &str) -> pb::EnvVarSource {
    pb::EnvVarSource {
        secret_key_ref: Some(pb::SecretKeySelector {
            name: name.into(),
            key: key.into(),
            optional: None,
        }),
        ..Default::default()
    }
}

/// `valueFrom` one of the pod's fields (`fieldRef`).
pub fn pod_field(path: &str) -> pb::EnvVarSource {
    pb::EnvVarSource {
        field_ref: Some(pb::ObjectFieldSelector {
            api_version: "v1".into(),
            field_path: path.into(),
        }),
        ..Default::default()
    }
}

/// Pod `name` in `default`, with one container `main` that sleeps.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(pb::Pod {
        metadata: meta(name, "default"),
        spec: Some(pb::PodSpec {
            containers: vec![container("main").build()],
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub struct PodBuilder(pb::Pod);

impl PodBuilder {
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.meta_mut().uid = uid.into();
        self
    }

    fn spec(&mut self) -> &mut pb::PodSpec {
        self.0.spec.get_or_insert_default()
    }

    /// Its containers, instead of `main`.
    pub fn containers(mut self, containers: Vec<pb::Container>) -> Self {
        self.spec().containers = containers;
        self
    }

    /// Its one container, instead of `main`.
    pub fn container(self, container: impl Into<pb::Container>) -> Self {
        self.containers(vec![container.into()])
    }

    /// Init containers, run in this order before the containers.
    pub fn init_containers(mut self, init: Vec<pb::Container>) -> Self {
        self.spec().init_containers = init;
        self
    }

    /// Requests of its first container.
    pub fn requests(mut self, requests: &[(&str, &str)]) -> Self {
        let c = self.spec().containers.first_mut().expect("a container");
        c.resources
            .get_or_insert_default()
            .requests
            .extend(pairs(requests));
        self
    }

    pub fn restart_policy(mut self, policy: &str) -> Self {
        self.spec().restart_policy = policy.into();
        self
    }

    pub fn grace_period(mut self, seconds: i64) -> Self {
        self.spec().termination_grace_period_seconds = Some(seconds);
        self
    }

    /// Bound to `node`.
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = node.into();
        self
    }

    /// A status of `phase` with address `ip` (empty for none).
    pub fn status(mut self, phase: &str, ip: &str) -> Self {
        let status = self.0.status.get_or_insert_default();
        status.phase = phase.into();
        status.pod_ip = ip.into();
        self
    }

    /// Its Ready condition, in its status.
    pub fn ready(mut self, ready: bool) -> Self {
        let status = self.0.status.get_or_insert_default();
        status.conditions.retain(|c| c.r#type != "Ready");
        status.conditions.push(pb::Condition {
            r#type: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        });
        self
    }

    /// The address of its node, in its status.
    pub fn host_ip(mut self, ip: &str) -> Self {
        self.0.status.get_or_insert_default().host_ip = ip.into();
        self
    }
}

meta_setters!(PodBuilder, pb::Pod);

/// Node `name`, Ready, with room for 4 CPUs, 8Gi of memory and 10 pods.
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(pb::Node {
        metadata: meta(name, ""),
        status: Some(berth_api::resources::ready_status(&[
            ("cpu", "4"),
            ("memory", "8Gi"),
            ("pods", "10"),
        ])),
        ..Default::default()
    })
}

pub struct NodeBuilder(pb::Node);

impl NodeBuilder {
    /// Allocatable resources, replacing those named.
    pub fn allocatable(mut self, resources: &[(&str, &str)]) -> Self {
        let status = self.0.status.get_or_insert_default();
        status.allocatable.extend(pairs(resources));
        self
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.0.spec.get_or_insert_default().pod_cidr = cidr.into();
        self
    }

    /// Keeps pods that do not tolerate `key=value:effect` off it.
    pub fn taint(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.0.spec.get_or_insert_default().taints.push(pb::Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
            ..Default::default()
        });
        self
    }

    /// No status at all: a node object no agent has reported on.
    pub fn unreported(mut self) -> Self {
        self.0.status = None;
        self
    }

    pub fn labels(mut self, labels: &[(&str, &str)]) -> Self {
        self.0.meta_mut().labels.extend(pairs(labels));
        self
    }

    pub fn build(self) -> pb::Node {
        self.0
    }
}

/// Deployment `name` in `default`: one replica of a sleeping container
/// `main`, selecting and labelling its pods `app=NAME`.
pub fn deployment(name: &str) -> DeploymentBuilder {
    let labels = pairs(&[("app", name)]);
    DeploymentBuilder(pb::Deployment {
        metadata: meta(name, "default"),
        spec: Some(pb::DeploymentSpec {
            replicas: Some(1),
            selector: Some(pb::LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(pb::PodTemplateSpec {
                metadata: Some(pb::ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(pb::PodSpec {
                    containers: vec![container("main").build()],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub struct DeploymentBuilder(pb::Deployment);

impl DeploymentBuilder {
    fn spec(&mut self) -> &mut pb::DeploymentSpec {
        self.0.spec.get_or_insert_default()
    }

    fn pod_spec(&mut self) -> &mut pb::PodSpec {
        let template = self.spec().template.get_or_insert_default();
        template.spec.get_or_insert_default()
    }

    pub fn replicas(mut self, replicas: i32) -> Self {
        self.spec().replicas = Some(replicas);
        self
    }

    /// Its pods' one container, instead of `main`.
    pub fn container(mut self, container: impl Into<pb::Container>) -> Self {
        self.pod_spec().containers = vec![container.into()];
        self
    }

    pub fn grace_period(mut self, seconds: i64) -> Self {
        self.pod_spec().termination_grace_period_seconds = Some(seconds);
        self
    }

    /// Rolls out replacing pods with these bounds ("1", "25%").
    pub fn rolling(mut self, max_unavailable: &str, max_surge: &str) -> Self {
        self.spec().strategy = Some(pb::DeploymentStrategy {
            r#type: "RollingUpdate".into(),
            rolling_update: Some(pb::RollingUpdateDeployment {
                max_unavailable: max_unavailable.into(),
                max_surge: max_surge.into(),
            }),
        });
        self
    }
}

meta_setters!(DeploymentBuilder, pb::Deployment);

/// ConfigMap `name` in `default`, without data.
pub fn configmap(name: &str) -> ConfigMapBuilder {
    ConfigMapBuilder(pb::ConfigMap {
        metadata: meta(name, "default"),
        ..Default::default()
    })
}

pub struct ConfigMapBuilder(pb::ConfigMap);

impl ConfigMapBuilder {
    pub fn data(mut self, key: &str, value: &str) -> Self {
        self.0.data.insert(key.into(), value.into());
        self
    }
}

meta_setters!(ConfigMapBuilder, pb::ConfigMap);

/// Secret `name` in `default`, of type Opaque, without data.
pub fn secret(name: &str) -> SecretBuilder {
    SecretBuilder(pb::Secret {
        metadata: meta(name, "default"),
        ..Default::default()
    })
}

pub struct SecretBuilder(pb::Secret);

impl SecretBuilder {
    /// `value` in plain text, which the server encodes into data.
    pub fn string_data(mut self, key: &str, value: &str) -> Self {
        self.0.string_data.insert(key.into(), value.into());
        self
    }
}

meta_setters!(SecretBuilder, pb::Secret);

/// Service `name` in `default` on port 80, selecting nothing.
pub fn service(name: &str) -> ServiceBuilder {
    ServiceBuilder(pb::Service {
        metadata: meta(name, "default"),
        spec: Some(pb::ServiceSpec {
            ports: vec![pb::ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub struct ServiceBuilder(pb::Service);

impl ServiceBuilder {
    pub fn selector(mut self, selector: &[(&str, &str)]) -> Self {
        self.0.spec.get_or_insert_default().selector = pairs(selector);
        self
    }

    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.0.spec.get_or_insert_default().cluster_ip = ip.into();
        self
    }
}

meta_setters!(ServiceBuilder, pb::Service);

/// The phase a pod's status gives ("" without one).
pub fn phase(p: &pb::Pod) -> &str {
    p.status.as_ref().map_or("", |s| s.phase.as_str())
}

/// Running, and its Ready condition True.
pub fn is_ready(p: &pb::Pod) -> bool {
    p.status.as_ref().is_some_and(|s| {
        s.phase == "Running"
            && s.conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
    })
}

/// Its address ("" before it has one).
pub fn pod_ip(p: &pb::Pod) -> &str {
    p.status.as_ref().map_or("", |s| s.pod_ip.as_str())
}

/// A User subject of an RBAC binding.
pub fn user(name: &str) -> pb::Subject {
    subject("User", name)
}

/// A Group subject of an RBAC binding.
pub fn group(name: &str) -> pb::Subject {
    subject("Group", name)
}

fn subject(kind: &str, name: &str) -> pb::Subject {
    pb::Subject {
        kind: kind.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn role_ref(kind: &str, name: &str) -> Option<pb::RoleRef> {
    Some(pb::RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    })
}

/// RoleBinding `name` in `namespace` of `subject` to the `kind` (Role or
/// ClusterRole) `role`.
pub fn role_binding(
    namespace: &str,
    name: &str,
    subject: pb::Subject,
    kind: &str,
    role: &str,
) -> pb::RoleBinding {
    pb::RoleBinding {
        metadata: meta(name, namespace),
        subjects: vec![subject],
        role_ref: role_ref(kind, role),
        ..Default::default()
    }
}

/// ClusterRoleBinding `name` of `subject` to ClusterRole `role`.
pub fn cluster_role_binding(
    name: &str,
    subject: pb::Subject,
    role: &str,
) -> pb::ClusterRoleBinding {
    pb::ClusterRoleBinding {
        metadata: meta(name, ""),
        subjects: vec![subject],
        role_ref: role_ref("ClusterRole", role),
        ..Default::default()
    }
}

/// One rule: `verbs` on `resources` of the core group.
pub fn core_rule(verbs: &[&str], resources: &[&str]) -> pb::PolicyRule {
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    pb::PolicyRule {
        verbs: strings(verbs),
        api_groups: vec![String::new()],
        resources: strings(resources),
        ..Default::default()
    }
}
