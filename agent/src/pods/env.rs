//! A container's environment, worked out each time it starts as the
//! kubelet does: `HOSTNAME`, then every `envFrom` source in order, then
//! `env` in order, a later variable replacing an earlier one of the same
//! name. A `value` is expanded (`$(NAME)`) from the variables before it; a
//! `valueFrom` is read from the pod, its containers' resources, or a
//! ConfigMap or Secret key and is not expanded. `command` and `args` are
//! then expanded from the whole environment.
//!
//! ConfigMaps and Secrets are read through the API at every start, so a
//! container restarted after one changed sees the new values; the node
//! authorizer lets a node read those its pods name, and no others. One
//! that is missing (or lacks the key) keeps the container waiting with
//! `CreateContainerConfigError` and the kubelet's message, unless the
//! reference is `optional`; the start is retried until it appears.

use std::collections::BTreeMap;
use std::collections::HashMap;

use async_trait::async_trait;
use base64::Engine;
use berth_api::env::expand;
use berth_api::env::PodField;
use berth_api::env::ResourceField;
use berth_api::pb;
use berth_api::Object;

/// The waiting reason of a container whose environment cannot be made.
pub const CONFIG_ERROR: &str = "CreateContainerConfigError";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    /// As the API's NotFound error names the resource.
    pub(crate) fn lower(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("{} {name:?} not found", of.lower())]
    Missing { of: Source, name: String },
    #[error("couldn't find key {key} in {} {namespace}/{name}", of.kind())]
    MissingKey {
        of: Source,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("key {key} of Secret {namespace}/{name} is not UTF-8 text, which an environment variable must be")]
    NotText {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("cannot read {} {namespace}/{name}: {message}", of.kind())]
    Unreadable {
        of: Source,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// One ConfigMap's or Secret's values: text for a ConfigMap's `data`,
/// decoded bytes for a Secret's.
pub type Values = BTreeMap<String, Vec<u8>>;

/// Where ConfigMaps and Secrets are read from.
#[async_trait]
pub trait Objects: Send + Sync {
    /// The values of `source` `namespace/name`; None if there is none.
    async fn values(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Values>, String>;

    /// Every key of `source` as a volume's file holds it: a ConfigMap's
    /// `data` and `binaryData`, a Secret's `data`.
    async fn files(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Values>, String> {
        self.values(source, namespace, name).await
    }
}

/// Reads through the API with the node's identity.
pub struct ApiObjects(pub berth_client::connect::Connector);

fn decode(key: String, value: &str) -> Result<(String, Vec<u8>), String> {
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(bytes) => Ok((key, bytes)),
        Err(e) => Err(format!("key {key} is not base64: {e}")),
    }
}

fn secret_values(secret: pb::Secret) -> Result<Values, String> {
    secret
        .data
        .into_iter()
        .map(|(k, v)| decode(k, &v))
        .collect()
}

impl ApiObjects {
    /// `source` `namespace/name` read linearizably; None if there is none.
    /// A ConfigMap's binaryData is included only `with_binary`.
    async fn read(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
        with_binary: bool,
    ) -> Result<Option<Values>, String> {
        use berth_client::objects::ClientKind;
        let ch = self.0.channel().await.map_err(|e| e.to_string())?;
        let req = pb::GetRequest {
            namespace: namespace.to_string(),
            name: name.to_string(),
            serializable: false,
        };
        let read = match source {
            Source::ConfigMap => pb::ConfigMap::get(ch, req).await.map(|cm| {
                let data = cm.data.into_iter().map(|(k, v)| Ok((k, v.into_bytes())));
                let binary = if with_binary {
                    cm.binary_data
                } else {
                    Default::default()
                };
                data.chain(binary.into_iter().map(|(k, v)| decode(k, &v)))
                    .collect()
            }),
            Source::Secret => pb::Secret::get(ch, req).await.map(secret_values),
        };
        match read {
            Ok(values) => values.map(Some),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => {
                self.0.failed(&s).await;
                Err(s.message().to_string())
            }
        }
    }
}

#[async_trait]
impl Objects for ApiObjects {
    async fn values(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Values>, String> {
        self.read(source, namespace, name, false).await
    }

    async fn files(
        &self,
        source: Source,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Values>, String> {
        self.read(source, namespace, name, true).await
    }
}

/// What working out an environment reads besides the pod.
pub struct Context<'a> {
    pub objects: &'a dyn Objects,
    /// The node's allocatable resources: the value of a limit not set.
    pub allocatable: &'a BTreeMap<String, String>,
}

/// The variables so far, in the order first set.
#[derive(Default)]
struct Vars {
    list: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Vars {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.list[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.list.len());
                self.list.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<String> {
        self.index.get(name).map(|&i| self.list[i].1.clone())
    }
}

/// Each ConfigMap or Secret read once per start.
struct Reader<'a> {
    objects: &'a dyn Objects,
    namespace: String,
    read: HashMap<(Source, String), Option<Values>>,
}

impl Reader<'_> {
    async fn values(&mut self, source: Source, name: &str) -> Result<Option<&Values>, EnvError> {
        let key = (source, name.to_string());
        if !self.read.contains_key(&key) {
            let values = self
                .objects
                .values(source, &self.namespace, name)
                .await
                .map_err(|message| EnvError::Unreadable {
                    of: source,
                    namespace: self.namespace.clone(),
                    name: name.to_string(),
                    message,
                })?;
            self.read.insert(key.clone(), values);
        }
        Ok(self.read[&key].as_ref())
    }

    /// One key's value; None when it or its object is missing and the
    /// reference is optional.
    async fn key(
        &mut self,
        source: Source,
        name: &str,
        key: &str,
        optional: bool,
    ) -> Result<Option<String>, EnvError> {
        let namespace = self.namespace.clone();
        let Some(values) = self.values(source, name).await? else {
            return match optional {
                true => Ok(None),
                false => Err(EnvError::Missing {
                    of: source,
                    name: name.to_string(),
                }),
            };
        };
        match values.get(key) {
            Some(bytes) => text(bytes, &namespace, name, key).map(Some),
            None if optional => Ok(None),
            None => Err(EnvError::MissingKey {
                of: source,
                namespace,
                name: name.to_string(),
                key: key.to_string(),
            }),
        }
    }
}

fn text(bytes: &[u8], namespace: &str, name: &str, key: &str) -> Result<String, EnvError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| EnvError::NotText {
        namespace: namespace.to_string(),
        name: name.to_string(),
        key: key.to_string(),
    })
}

/// The environment of `container` of `pod`, whose status holds the pod's
/// and the host's addresses as they will be when it starts.
pub async fn environment(
    cx: &Context<'_>,
    pod: &pb::Pod,
    container: &pb::Container,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut reader = Reader {
        objects: cx.objects,
        namespace: pod.namespace().to_string(),
        read: HashMap::new(),
    };
    let mut vars = Vars::default();
    vars.set("HOSTNAME".into(), pod.name().to_string());
    for from in &container.env_from {
        let (source, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(c), _) => (Source::ConfigMap, &c.name, c.optional),
            (None, Some(s)) => (Source::Secret, &s.name, s.optional),
            (None, None) => continue,
        };
        match reader.values(source, name).await? {
            Some(values) => {
                for (key, bytes) in values {
                    let value = text(bytes, pod.namespace(), name, key)?;
                    vars.set(format!("{}{key}", from.prefix), value);
                }
            }
            None if optional == Some(true) => {}
            None => {
                return Err(EnvError::Missing {
                    of: source,
                    name: name.clone(),
                })
            }
        }
    }
    for e in &container.env {
        let value = match &e.value_from {
            None => Some(expand(&e.value, |n| vars.get(n))),
            Some(from) => value_from(cx, &mut reader, pod, container, from).await?,
        };
        if let Some(value) = value {
            vars.set(e.name.clone(), value);
        }
    }
    Ok(vars.list)
}

async fn value_from(
    cx: &Context<'_>,
    reader: &mut Reader<'_>,
    pod: &pb::Pod,
    container: &pb::Container,
    from: &pb::EnvVarSource,
) -> Result<Option<String>, EnvError> {
    if let Some(f) = &from.field_ref {
        let field = PodField::parse(&f.field_path).map_err(EnvError::Invalid)?;
        return Ok(Some(field.value(pod)));
    }
    if let Some(r) = &from.resource_field_ref {
        let resource = ResourceField::parse(&r.resource).map_err(EnvError::Invalid)?;
        let divisor = resource.divisor(&r.divisor).map_err(EnvError::Invalid)?;
        let named = match r.container_name.as_str() {
            "" => Some(container),
            other => pod
                .spec
                .iter()
                .flat_map(|s| s.init_containers.iter().chain(&s.containers))
                .find(|c| c.name == other),
        };
        let named = named.ok_or_else(|| {
            EnvError::Invalid(format!("no container {:?} in the pod", r.container_name))
        })?;
        return Ok(Some(resource.value(named, divisor, cx.allocatable)));
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        return reader
            .key(Source::ConfigMap, &r.name, &r.key, optional)
            .await;
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        return reader.key(Source::Secret, &r.name, &r.key, optional).await;
    }
    Err(EnvError::Invalid("a valueFrom names no source".to_string()))
}

/// `command` or `args` with `$(NAME)` expanded from `env`.
pub fn expand_all(words: &[String], env: &[(String, String)]) -> Vec<String> {
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    words
        .iter()
        .map(|w| expand(w, |n| vars.get(n).map(|v| v.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// ConfigMaps and Secrets in memory, counting reads.
    #[derive(Default)]
    struct Stored {
        objects: HashMap<(Source, String), Values>,
        reads: Mutex<u32>,
    }

    impl Stored {
        fn with(mut self, source: Source, name: &str, pairs: &[(&str, &str)]) -> Self {
            let values = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect();
            self.objects.insert((source, name.to_string()), values);
            self
        }
    }

    #[async_trait]
    impl Objects for Stored {
        async fn values(
            &self,
            source: Source,
            _namespace: &str,
            name: &str,
        ) -> Result<Option<Values>, String> {
            *self.reads.lock().unwrap() += 1;
            Ok(self.objects.get(&(source, name.to_string())).cloned())
        }
    }

    fn pod(container: pb::Container) -> pb::Pod {
        let mut pod = pb::Pod::default();
        let meta = pod.metadata.get_or_insert_with(Default::default);
        meta.name = "web-1".into();
        meta.namespace = "shop".into();
        meta.labels.insert("tier".into(), "front".into());
        let status = pod.status.get_or_insert_with(Default::default);
        status.pod_ip = "10.244.0.7".into();
        status.host_ip = "192.0.2.1".into();
        pod.spec.get_or_insert_with(Default::default).containers = vec![container];
        pod
    }

    fn value(name: &str, value: &str) -> pb::EnvVar {
        pb::EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }

    fn from(name: &str, source: pb::EnvVarSource) -> pb::EnvVar {
        pb::EnvVar {
            name: name.into(),
            value: String::new(),
            value_from: Some(source),
        }
    }

    fn config_key(name: &str, key: &str, optional: Option<bool>) -> pb::EnvVarSource {
        pb::EnvVarSource {
            config_map_key_ref: Some(pb::ConfigMapKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..Default::default()
        }
    }

    fn field(path: &str) -> pb::EnvVarSource {
        pb::EnvVarSource {
            field_ref: Some(pb::ObjectFieldSelector {
                api_version: "v1".into(),
                field_path: path.into(),
            }),
            ..Default::default()
        }
    }

    async fn resolve(stored: &Stored, c: pb::Container) -> Result<Vec<(String, String)>, EnvError> {
        let allocatable = [("cpu".to_string(), "2".to_string())].into();
        let cx = Context {
            objects: stored,
            allocatable: &allocatable,
        };
        let pod = pod(c.clone());
        environment(&cx, &pod, &c).await
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn sources_apply_in_kubernetes_order() {
        let stored = Stored::default()
            .with(
                Source::ConfigMap,
                "settings",
                &[("MODE", "fast"), ("LEVEL", "3")],
            )
            .with(Source::Secret, "creds", &[("password", "s3cret")]);
        let c = pb::Container {
            name: "app".into(),
            env_from: vec![
                pb::EnvFromSource {
                    prefix: "CFG_".into(),
                    config_map_ref: Some(pb::ConfigMapEnvSource {
                        name: "settings".into(),
                        optional: None,
                    }),
                    secret_ref: None,
                },
                pb::EnvFromSource {
                    secret_ref: Some(pb::SecretEnvSource {
                        name: "creds".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ],
            env: vec![
                value("CFG_LEVEL", "9"),
                from("POD", field("metadata.name")),
                from("TIER", field("metadata.labels['tier']")),
                from("IP", field("status.podIP")),
                from("MODE2", config_key("settings", "MODE", None)),
                value("URL", "http://$(IP):80/$(POD)/$(NOPE)/$$(POD)"),
                from(
                    "CPU",
                    pb::EnvVarSource {
                        resource_field_ref: Some(pb::ResourceFieldSelector {
                            resource: "limits.cpu".into(),
                            divisor: "1m".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ),
            ],
            ..Default::default()
        };
        let env = resolve(&stored, c).await.unwrap();
        assert_eq!(get(&env, "HOSTNAME"), Some("web-1"));
        assert_eq!(get(&env, "CFG_MODE"), Some("fast"));
        assert_eq!(get(&env, "CFG_LEVEL"), Some("9"), "env wins over envFrom");
        assert_eq!(get(&env, "password"), Some("s3cret"));
        assert_eq!(get(&env, "TIER"), Some("front"));
        assert_eq!(get(&env, "MODE2"), Some("fast"));
        assert_eq!(
            get(&env, "URL"),
            Some("http://10.244.0.7:80/web-1/$(NOPE)/$(POD)")
        );
        assert_eq!(get(&env, "CPU"), Some("2000"), "no limit: the node's");
        assert_eq!(*stored.reads.lock().unwrap(), 2, "each object read once");
    }

    #[tokio::test]
    async fn a_value_sees_only_the_variables_before_it() {
        let c = pb::Container {
            env: vec![value("A", "$(B)"), value("B", "b"), value("C", "$(B)")],
            ..Default::default()
        };
        let env = resolve(&Stored::default(), c).await.unwrap();
        assert_eq!(get(&env, "A"), Some("$(B)"));
        assert_eq!(get(&env, "C"), Some("b"));
        let words = expand_all(&["echo".into(), "$(A)$(C)".into()], &env);
        assert_eq!(words, ["echo", "$(B)b"]);
    }

    #[tokio::test]
    async fn missing_references_say_what_the_kubelet_says_unless_optional() {
        let stored = Stored::default().with(Source::ConfigMap, "settings", &[("MODE", "fast")]);
        let with = |e: pb::EnvVar| pb::Container {
            env: vec![e],
            ..Default::default()
        };
        let err = resolve(&stored, with(from("X", config_key("nope", "k", None))))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "configmap \"nope\" not found");
        let err = resolve(&stored, with(from("X", config_key("settings", "k", None))))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key k in ConfigMap shop/settings"
        );
        let env = resolve(
            &stored,
            with(from("X", config_key("settings", "k", Some(true)))),
        )
        .await
        .unwrap();
        assert_eq!(get(&env, "X"), None, "an optional missing key is unset");
        let secret = pb::EnvVarSource {
            secret_key_ref: Some(pb::SecretKeySelector {
                name: "creds".into(),
                key: "k".into(),
                optional: None,
            }),
            ..Default::default()
        };
        let err = resolve(&stored, with(from("X", secret))).await.unwrap_err();
        assert_eq!(err.to_string(), "secret \"creds\" not found");
    }
}
