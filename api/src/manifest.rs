//! Manifests: YAML (one or many documents) or JSON, in Kubernetes' shape.
//! A field Berth does not know is an error that names it, with the
//! document and line; a `status` is ignored, as `kubectl apply` does.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::kinds::Kind;
use crate::kinds::KindInfo;
use crate::kinds::KINDS;
use crate::AnyObject;
use crate::Object;

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// 1-based document number in the file.
    pub document: usize,
    /// 1-based line in the file, where known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One YAML document's text and the file line it starts on (0-based).
struct Document<'a> {
    text: &'a str,
    first_line: usize,
}

fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut first_line = 0;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            docs.push(Document {
                text: &text[start..offset],
                first_line,
            });
            start = offset + line.len();
            first_line = i + 1;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        first_line,
    });
    docs
}

/// Reads every object in a manifest file.
pub fn parse(text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return parse_json(text);
    }
    let mut objects = Vec::new();
    let mut number = 0;
    for doc in split_documents(text) {
        let value: Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                return Err(ManifestError {
                    document: number + 1,
                    line: e.location().map(|l| doc.first_line + l.line()),
                    message: format!("malformed YAML: {}", strip_location(&e.to_string())),
                })
            }
        };
        if value.is_null() {
            continue;
        }
        number += 1;
        let located = |message: String, key: Option<&str>| ManifestError {
            document: number,
            line: key
                .and_then(|k| line_of_key(doc.text, k))
                .map(|l| doc.first_line + l + 1),
            message,
        };
        decode_value(value, &mut objects, &located)?;
    }
    Ok(objects)
}

fn parse_json(text: &str) -> Result<Vec<AnyObject>, ManifestError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ManifestError {
        document: 1,
        line: Some(e.line()),
        message: format!("malformed JSON: {}", strip_location(&e.to_string())),
    })?;
    let docs = match value {
        serde_json::Value::Array(items) => items,
        other => vec![other],
    };
    let mut objects = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let value: Value = serde_yaml_ng::to_value(doc).map_err(|e| ManifestError {
            document: i + 1,
            line: None,
            message: e.to_string(),
        })?;
        let located = |message: String, key: Option<&str>| ManifestError {
            document: i + 1,
            line: key
                .and_then(|k| line_of_key(text, &format!("\"{k}\"")))
                .map(|l| l + 1),
            message,
        };
        decode_value(value, &mut objects, &located)?;
    }
    Ok(objects)
}

/// Error messages of the parsers end in "at line L column C"; the caller
/// reports the line itself.
fn strip_location(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(i) = rest.find(" at line ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + " at line ".len()..];
        // Skip "N column M".
        let skip = after
            .find(|c: char| !(c.is_ascii_digit() || c == ' ' || "column".contains(c)))
            .unwrap_or(after.len());
        rest = &after[skip..];
    }
    out.push_str(rest);
    out
}

/// Serde names Rust types; a manifest's author knows YAML's.
fn plain_types(message: &str) -> String {
    ["i32", "i64", "u32", "u64"]
        .iter()
        .fold(message.to_string(), |m, t| {
            m.replace(&format!("expected {t}"), "expected an integer")
        })
}

/// The 0-based line of the first `key:` in a document (block or flow
/// style), to point at a field.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|line| {
        line.match_indices(key).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + key.len()..].trim_start_matches('"').trim_start();
            before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
                && after.starts_with(':')
        })
    })
}

type Locate<'a> = dyn Fn(String, Option<&str>) -> ManifestError + 'a;

fn decode_value(
    mut value: Value,
    out: &mut Vec<AnyObject>,
    located: &Locate<'_>,
) -> Result<(), ManifestError> {
    let Some(map) = value.as_mapping_mut() else {
        return Err(located(
            "a manifest must be a mapping with apiVersion, kind and metadata".into(),
            None,
        ));
    };
    let text =
        |m: &serde_yaml_ng::Mapping, k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let kind = text(map, "kind")
        .ok_or_else(|| located("kind is missing (e.g. kind: Pod)".into(), None))?;
    let api_version = text(map, "apiVersion")
        .ok_or_else(|| located("apiVersion is missing (e.g. apiVersion: v1)".into(), None))?;
    if kind == "List" {
        let items = map.remove("items").unwrap_or(Value::Null);
        let Value::Sequence(items) = items else {
            return Err(located("a List needs items".into(), Some("items")));
        };
        for item in items {
            decode_value(item, out, located)?;
        }
        return Ok(());
    }
    let Some(info) = KINDS.iter().find(|k| k.kind == kind) else {
        return Err(located(
            format!(
                "unknown kind {kind:?}: Berth supports {}",
                KINDS.iter().map(|k| k.kind).collect::<Vec<_>>().join(", ")
            ),
            Some("kind"),
        ));
    };
    if api_version != info.api_version {
        return Err(located(
            format!(
                "{kind} is apiVersion {:?}, not {api_version:?}",
                info.api_version
            ),
            Some("apiVersion"),
        ));
    }
    // Status is the system's to write; a manifest's is ignored.
    map.remove("status");
    let object = match info.id {
        Kind::Namespace => AnyObject::Namespace(typed(value, info, located)?),
        Kind::Node => AnyObject::Node(typed(value, info, located)?),
        Kind::Pod => AnyObject::Pod(typed(value, info, located)?),
        Kind::Deployment => AnyObject::Deployment(typed(value, info, located)?),
        Kind::Service => AnyObject::Service(typed(value, info, located)?),
        Kind::Endpoints => AnyObject::Endpoints(typed(value, info, located)?),
        Kind::ConfigMap => AnyObject::ConfigMap(typed(value, info, located)?),
        Kind::Secret => AnyObject::Secret(typed(value, info, located)?),
        Kind::Lease => AnyObject::Lease(typed(value, info, located)?),
        Kind::Role => AnyObject::Role(typed(value, info, located)?),
        Kind::ClusterRole => AnyObject::ClusterRole(typed(value, info, located)?),
        Kind::RoleBinding => AnyObject::RoleBinding(typed(value, info, located)?),
        Kind::ClusterRoleBinding => AnyObject::ClusterRoleBinding(typed(value, info, located)?),
    };
    out.push(object);
    Ok(())
}

fn typed<T: Object + DeserializeOwned>(
    value: Value,
    info: &KindInfo,
    located: &Locate<'_>,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let unknown = inner
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        let message = match &unknown {
            Some(field) => {
                let full = if path == "." {
                    field.clone()
                } else {
                    path.clone()
                };
                format!(
                    "{} field {full:?} is not supported by Berth ({inner})",
                    info.kind
                )
            }
            None => format!("{path}: {}", plain_types(&inner)),
        };
        let key = unknown.or_else(|| {
            path.rsplit('.')
                .next()
                .map(|k| k.split('[').next().unwrap_or(k).to_string())
        });
        located(message, key.as_deref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
        resources:
          requests: {cpu: 100m, memory: 64Mi}
          limits: {cpu: 1, memory: 128Mi}
        readinessProbe:
          httpGet: {path: /, port: 80}
status:
  replicas: 3
  somethingBerthDoesNotKnow: true
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 80
"#;

    #[test]
    fn a_kubernetes_manifest_applies_unchanged() {
        let objects = parse(DEPLOYMENT).unwrap();
        assert_eq!(objects.len(), 2);
        let AnyObject::Deployment(d) = &objects[0] else {
            panic!("{objects:?}")
        };
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let c = &spec
            .template
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        assert_eq!(c.resources.as_ref().unwrap().limits["cpu"], "1");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .port,
            "80"
        );
        assert!(d.status.is_none(), "a manifest's status is ignored");
        let AnyObject::Service(s) = &objects[1] else {
            panic!()
        };
        assert_eq!(s.spec.as_ref().unwrap().ports[0].target_port, "80");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_document_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: x\n    imagePullSecretz: y\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.document, 2);
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("spec.containers[0]"), "{e}");
        assert!(e.message.contains("imagePullSecretz"), "{e}");
    }

    #[test]
    fn wrong_types_unknown_kinds_and_bad_yaml_are_refused() {
        let e = parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n  replicas: three\n").unwrap_err();
        assert!(
            e.message.contains("spec.replicas") && e.message.contains("expected an integer"),
            "{e}"
        );
        assert_eq!(e.line, Some(5), "{e}");
        let e = parse("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: a}\n")
            .unwrap_err();
        assert!(e.message.contains("unknown kind"), "{e}");
        let e = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: a\n").unwrap_err();
        assert!(
            e.message.contains("malformed YAML") && !e.message.contains("column"),
            "{e}"
        );
        let e = parse("apiVersion: v1\nkind: Deployment\nmetadata: {name: a}\n").unwrap_err();
        assert!(e.message.contains("apps/v1"), "{e}");
    }

    #[test]
    fn json_manifests_and_lists() {
        let objects = parse(r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}}]}"#).unwrap();
        let AnyObject::ConfigMap(cm) = &objects[0] else {
            panic!()
        };
        assert_eq!(cm.data["k"], "v");
        let e = parse("{\"apiVersion\": \"v1\",\n \"kind\": \"ConfigMap\",\n \"metadata\": {\"name\": \"a\"},\n \"datta\": {}}").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn rbac_manifests_from_the_kubernetes_documentation_apply_and_are_checked() {
        let text = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {namespace: default, name: pod-reader}
rules:
- apiGroups: [""] # "" indicates the core API group
  resources: ["pods"]
  verbs: ["get", "watch", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: read-secrets-global}
subjects:
- kind: Group
  name: manager
  apiGroup: rbac.authorization.k8s.io
roleRef:
  kind: ClusterRole
  name: secret-reader
  apiGroup: rbac.authorization.k8s.io
"#;
        let mut objects = parse(text).unwrap();
        for o in &mut objects {
            crate::with_object!(o, o => {
                o.apply_defaults();
                o.validate().unwrap();
            });
        }
        let AnyObject::Role(role) = &objects[0] else {
            panic!()
        };
        assert_eq!(role.rules[0].verbs, ["get", "watch", "list"]);

        // What Berth cannot do is refused by name.
        let e = parse("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: m}\naggregationRule: {}\n").unwrap_err();
        assert!(e.message.contains("aggregationRule"), "{e}");

        let bad = parse(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\nsubjects: [{kind: ServiceAccount, name: ci}, {kind: Robot, name: r}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: x}\n",
        )
        .unwrap();
        let AnyObject::ClusterRoleBinding(mut b) = bad[0].clone() else {
            panic!()
        };
        b.apply_defaults();
        let e = b.validate().unwrap_err().to_string();
        for expected in [
            "roleRef.kind: a ClusterRoleBinding grants a ClusterRole",
            "subjects[0].namespace: is required",
            "subjects[1].kind: \"Robot\" must be User, Group or ServiceAccount",
        ] {
            assert!(e.contains(expected), "{expected} in {e}");
        }
        let empty = parse("apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: r}\nrules: [{resources: [pods]}]\n").unwrap();
        let AnyObject::Role(r) = &empty[0] else {
            panic!()
        };
        let e = r.validate().unwrap_err().to_string();
        assert!(
            e.contains("rules[0].verbs") && e.contains("rules[0].apiGroups"),
            "{e}"
        );
    }

    fn secret(text: &str) -> crate::pb::Secret {
        let objects = parse(text).unwrap();
        let AnyObject::Secret(mut s) = objects[0].clone() else {
            panic!()
        };
        s.apply_defaults();
        s
    }

    #[test]
    fn secrets_are_kubernetes_own_with_string_data_encoded_and_types_checked() {
        // From the Kubernetes documentation's "Managing Secrets using
        // Configuration File".
        let s = secret(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: mysecret\ntype: Opaque\ndata:\n  username: YWRtaW4=\n  password: MWYyZDFlMmU2N2Rm\nstringData:\n  username: administrator\n",
        );
        s.validate().unwrap();
        assert!(s.string_data.is_empty(), "stringData is never stored");
        assert_eq!(
            s.data["username"], "YWRtaW5pc3RyYXRvcg==",
            "stringData wins"
        );
        assert_eq!(s.data["password"], "MWYyZDFlMmU2N2Rm");
        let plain = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: p}\n");
        assert_eq!(plain.r#type, "Opaque");

        let tls = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: t}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}\n");
        let e = tls.validate().unwrap_err().to_string();
        assert!(
            e.contains("data[\"tls.key\"]: required for a Secret of type kubernetes.io/tls"),
            "{e}"
        );
        let docker = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: d}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: '{not json'}\n");
        let e = docker.validate().unwrap_err().to_string();
        assert!(
            e.contains("data[\".dockerconfigjson\"]: is not JSON"),
            "{e}"
        );
        let basic = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: b}\ntype: kubernetes.io/basic-auth\nstringData: {password: x}\n");
        basic.validate().unwrap();
        let sa = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/service-account-token\n");
        let e = sa.validate().unwrap_err().to_string();
        assert!(e.contains("Berth issues no service-account tokens"), "{e}");
        let bad = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: {'..': YQ==, k: not-base64!}\n");
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("data[\"..\"]") && e.contains("data[\"k\"]: is not valid base64"),
            "{e}"
        );
    }

    #[test]
    fn an_immutable_secret_or_config_map_keeps_its_data_and_a_secret_its_type() {
        let stored = secret("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nimmutable: true\nstringData: {k: v}\n");
        let mut next = stored.clone();
        next.data.insert("k".into(), "dzI=".into());
        assert!(next
            .check_update(&stored)
            .unwrap_err()
            .contains("data is immutable"));
        next = stored.clone();
        next.immutable = Some(false);
        assert!(next
            .check_update(&stored)
            .unwrap_err()
            .contains("cannot be unset"));
        next = stored.clone();
        next.meta_mut().labels.insert("a".into(), "b".into());
        next.check_update(&stored).unwrap();
        next.r#type = "kubernetes.io/tls".into();
        assert!(next
            .check_update(&stored)
            .unwrap_err()
            .contains("type is \"Opaque\""));

        let AnyObject::ConfigMap(cm) = parse(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\nimmutable: true\ndata: {k: v}\n",
        )
        .unwrap()[0]
            .clone()
        else {
            panic!()
        };
        let mut changed = cm.clone();
        changed.data.insert("k".into(), "w".into());
        assert!(changed
            .check_update(&cm)
            .unwrap_err()
            .contains("data is immutable"));
        let mut mutable = cm.clone();
        mutable.immutable = None;
        changed.immutable = None;
        changed.check_update(&mutable).unwrap();
    }
}
