//! Every parser of what arrives from the network, fed arbitrary input:
//! manifests (as text, and as documents shaped like Kubernetes objects with
//! wrong types and values where fields belong), label and field selectors,
//! and quantities. None may panic; each refusal says what was wrong; what
//! is accepted survives admission (defaults, validation, update checks)
//! without a panic either.

use berth_api::kinds::KINDS;
use berth_api::manifest;
use berth_api::quantity::Quantity;
use berth_api::selector::Field;
use berth_api::selector::FieldSelector;
use berth_api::selector::LabelSelector;
use berth_api::with_object;
use berth_api::Object;
use proptest::prelude::*;
use serde_json::Value;

/// Field names of Berth's kinds, so that generated documents reach deep
/// into typed deserialization instead of stopping at the first unknown key.
const FIELDS: &[&str] = &[
    "metadata",
    "name",
    "namespace",
    "labels",
    "annotations",
    "spec",
    "status",
    "containers",
    "initContainers",
    "image",
    "command",
    "args",
    "env",
    "value",
    "ports",
    "containerPort",
    "protocol",
    "resources",
    "requests",
    "limits",
    "cpu",
    "memory",
    "replicas",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "template",
    "strategy",
    "rollingUpdate",
    "maxSurge",
    "maxUnavailable",
    "type",
    "clusterIP",
    "targetPort",
    "port",
    "nodeName",
    "nodeSelector",
    "tolerations",
    "effect",
    "taints",
    "podCIDR",
    "data",
    "binaryData",
    "stringData",
    "immutable",
    "rules",
    "verbs",
    "apiGroups",
    "resourceNames",
    "subjects",
    "kind",
    "apiGroup",
    "roleRef",
    "holderIdentity",
    "leaseTransitions",
    "leaseDurationSeconds",
    "subsets",
    "addresses",
    "ip",
    "readinessProbe",
    "livenessProbe",
    "httpGet",
    "path",
    "tcpSocket",
    "periodSeconds",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "finalizers",
];

/// A JSON value of any shape, its keys mostly Kubernetes' field names.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["500m", "1Gi", "-1", "1e400", "..", "a=b", "*", ""])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(FIELDS).prop_map(str::to_string),
            1 => "[a-zA-Z./-]{1,10}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A document with a real apiVersion and kind and anything else.
fn document() -> impl Strategy<Value = Value> {
    (prop::sample::select(KINDS), json()).prop_map(|(info, body)| {
        let mut doc = match body {
            Value::Object(map) => map,
            other => [("spec".to_string(), other)].into_iter().collect(),
        };
        doc.insert("apiVersion".into(), info.api_version.into());
        doc.insert("kind".into(), info.kind.into());
        Value::Object(doc)
    })
}

/// What admission does with an object, none of which may panic.
fn admit(text: &str) {
    match manifest::parse(text) {
        Err(e) => assert!(!e.message.is_empty(), "an empty error for {text:?}"),
        Ok(objects) => {
            for mut object in objects {
                with_object!(&mut object, o => {
                    o.apply_defaults();
                    if let Err(e) = o.validate() {
                        assert!(!e.to_string().is_empty());
                    }
                    let _ = o.check_update(&o.clone());
                    let _ = o.spec_bytes();
                });
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_text_is_a_manifest_or_a_clear_error(text in "\\PC{0,200}") {
        admit(&text);
    }

    #[test]
    fn documents_shaped_like_objects_are_admitted_or_refused_cleanly(docs in prop::collection::vec(document(), 1..3)) {
        let json = serde_json::to_string(&Value::Array(docs.clone())).unwrap();
        admit(&format!("{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": {json}}}"));
        let yaml: Vec<String> = docs.iter().map(|d| serde_yaml_ng::to_string(d).unwrap()).collect();
        admit(&yaml.join("---\n"));
    }

    #[test]
    fn selectors_parse_or_say_why(
        text in prop_oneof!["\\PC{0,40}", "[a-z0-9=!,() ./-]{0,40}", "[a-z]{1,3}( in | notin |=|!=|==)\\(?[a-z,]{0,8}\\)?"],
        labels in prop::collection::btree_map("[a-z]{1,3}", "[a-z]{0,3}", 0..4),
    ) {
        match LabelSelector::parse(&text) {
            Ok(selector) => { selector.matches(&labels); }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        for node_name in [false, true] {
            match FieldSelector::parse(&text, node_name) {
                Ok(selector) => { selector.matches(|_: Field| "x".to_string()); }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn quantities_parse_or_say_why(text in prop_oneof!["\\PC{0,20}", "[+]?[0-9]{0,30}(\\.[0-9]{0,12})?(m|k|M|G|Ki|Mi|Gi|Ei|e[0-9]{1,3}|E[0-9]{1,2})?"]) {
        match Quantity::parse(&text) {
            Ok(q) => prop_assert_eq!(Quantity::parse(&q.to_string()), Ok(q)),
            Err(e) => prop_assert!(e.to_string().contains("is not a quantity")),
        }
    }
}
