//! `cordon`, `uncordon` and `drain`: taking a node out of scheduling.

use anyhow::bail;
use anyhow::Result;
use berth::objects::ClientKind;
use berth_api::pb;
use berth_api::Object;
use tonic::Code;

use super::status_error;
use super::Ctx;

/// Sets or clears `spec.unschedulable`.
pub async fn cordon(ctx: &Ctx, node: &str, unschedulable: bool) -> Result<()> {
    let ch = ctx.leader_channel().await?;
    for _ in 0..5 {
        let mut n = pb::Node::get(
            ch.clone(),
            pb::GetRequest {
                name: node.to_string(),
                ..Default::default()
            },
        )
        .await
        .map_err(status_error)?;
        let spec = n.spec.get_or_insert_default();
        if spec.unschedulable == unschedulable {
            println!(
                "node/{node} already {}",
                if unschedulable {
                    "cordoned"
                } else {
                    "uncordoned"
                }
            );
            return Ok(());
        }
        spec.unschedulable = unschedulable;
        match pb::Node::update(ch.clone(), n).await {
            Ok(_) => {
                println!(
                    "node/{node} {}",
                    if unschedulable {
                        "cordoned"
                    } else {
                        "uncordoned"
                    }
                );
                return Ok(());
            }
            Err(s) if s.code() == Code::Aborted => continue,
            Err(s) => return Err(status_error(s)),
        }
    }
    bail!("conflict: node {node:?} kept changing; retry")
}

/// Cordons the node, then deletes the pods bound to it so that their
/// owners replace them elsewhere.
pub async fn drain(ctx: &Ctx, node: &str) -> Result<()> {
    cordon(ctx, node, true).await?;
    let ch = ctx.leader_channel().await?;
    let (pods, _) = pb::Pod::list(
        ch.clone(),
        pb::ListRequest {
            field_selector: format!("spec.nodeName={node}"),
            ..Default::default()
        },
    )
    .await
    .map_err(status_error)?;
    for p in pods {
        let req = pb::DeleteRequest {
            namespace: p.namespace().to_string(),
            name: p.name().to_string(),
            resource_version: String::new(),
        };
        match pb::Pod::delete(ch.clone(), req).await {
            Ok(_) => println!("pod/{} evicted", p.name()),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status_error(s)),
        }
    }
    println!("node/{node} drained");
    Ok(())
}
