//! `berth describe`: an object's metadata, spec and status for a person,
//! with conditions spelled out (an unschedulable pod's reason shows here).

use anyhow::Result;
use berth::for_kind;
use berth::objects::ClientKind;
use berth_api::kinds::Kind;
use berth_api::pb;
use berth_api::Object;

use super::kind_info;
use super::status_error;
use super::table::age;
use super::Ctx;
use super::NamespaceArgs;

pub async fn describe(ctx: &Ctx, kind: &str, name: &str, ns: &NamespaceArgs) -> Result<()> {
    let info = kind_info(kind)?;
    let namespace = if info.namespaced {
        ns.get()
    } else {
        String::new()
    };
    let ch = ctx.channel().await?;
    let req = pb::GetRequest {
        namespace,
        name: name.to_string(),
        serializable: false,
    };
    for_kind!(info, K => {
        let obj = K::get(ch, req).await.map_err(status_error)?;
        print_described(&obj)
    })
}

fn print_described<K: Object>(obj: &K) -> Result<()> {
    let meta = obj.meta().cloned().unwrap_or_default();
    println!("Name:               {}", meta.name);
    if K::INFO.namespaced {
        println!("Namespace:          {}", meta.namespace);
    }
    println!("Kind:               {}", K::INFO.kind);
    println!("UID:                {}", meta.uid);
    println!("Resource Version:   {}", meta.resource_version);
    println!("Generation:         {}", meta.generation);
    println!(
        "Created:            {} ({} ago)",
        meta.creation_timestamp,
        age(&meta.creation_timestamp)
    );
    let kv = |m: &std::collections::BTreeMap<String, String>| {
        if m.is_empty() {
            "<none>".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n                    ")
        }
    };
    println!("Labels:             {}", kv(&meta.labels));
    println!("Annotations:        {}", kv(&meta.annotations));
    let mut value = serde_json::to_value(obj)?;
    let Some(map) = value.as_object_mut() else {
        return Ok(());
    };
    for key in ["apiVersion", "kind", "metadata"] {
        map.remove(key);
    }
    if K::INFO.id == Kind::Secret {
        hide_values(map);
    }
    let conditions = map
        .get_mut("status")
        .and_then(|s| s.as_object_mut())
        .and_then(|s| s.remove("conditions"));
    for (section, body) in map.iter() {
        println!("{}:", capitalise(section));
        for line in serde_yaml_ng::to_string(body)?.lines() {
            println!("  {line}");
        }
    }
    if let Some(serde_json::Value::Array(conds)) = conditions {
        println!("Conditions:");
        println!("  {:<18} {:<8} {:<22} MESSAGE", "TYPE", "STATUS", "REASON");
        for c in conds {
            let f = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            println!(
                "  {:<18} {:<8} {:<22} {}",
                f("type"),
                f("status"),
                f("reason"),
                f("message")
            );
        }
    }
    println!("Events:             <none>");
    Ok(())
}

/// A Secret's values are not for the screen: their sizes, as kubectl
/// shows them.
fn hide_values(map: &mut serde_json::Map<String, serde_json::Value>) {
    use base64::Engine;
    let Some(serde_json::Value::Object(data)) = map.get_mut("data") else {
        return;
    };
    for value in data.values_mut() {
        let size = value
            .as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map_or(0, |bytes| bytes.len());
        *value = serde_json::Value::String(format!("{size} bytes"));
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
