//! `apply`, `delete` and `scale`: changes from manifests and flags.

use std::path::Path;

use anyhow::anyhow;
use anyhow::bail;
use anyhow::Context;
use anyhow::Result;
use berth::objects::ClientKind;
use berth_api::manifest;
use berth_api::pb;
use berth_api::with_object;
use berth_api::AnyObject;
use berth_api::Object;
use berth_api::Reason;
use clap::Args;

use super::kind_info;
use super::object_ref;
use super::status_error;
use super::Ctx;
use super::NamespaceArgs;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A manifest file, a directory of them (.yaml, .yml, .json), or - for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub ns: NamespaceArgs,
}

/// Reads every object in the files, with the namespace flag applied.
fn read_objects(files: &[String], ns: &NamespaceArgs) -> Result<Vec<AnyObject>> {
    let mut objects = Vec::new();
    for f in files {
        for (path, text) in read_sources(f)? {
            let parsed = manifest::parse(&text).map_err(|e| anyhow!("{path}: {e}"))?;
            objects.extend(parsed);
        }
    }
    for o in &mut objects {
        let info = o.info();
        if !info.namespaced {
            continue;
        }
        let flag = ns.namespace.as_deref();
        with_object!(o, obj => {
            let meta = obj.meta_mut();
            match flag {
                Some(n) if !meta.namespace.is_empty() && meta.namespace != n => bail!(
                    "{} is in namespace {:?} but -n says {n:?}: drop -n or change the manifest",
                    object_ref(info, &meta.name),
                    meta.namespace
                ),
                Some(n) => meta.namespace = n.to_string(),
                None if meta.namespace.is_empty() => meta.namespace = "default".into(),
                None => {}
            }
        });
    }
    Ok(objects)
}

fn is_namespace(o: &AnyObject) -> bool {
    *o.info() == <pb::Namespace as Object>::INFO
}

fn read_sources(f: &str) -> Result<Vec<(String, String)>> {
    if f == "-" {
        let text =
            std::io::read_to_string(std::io::stdin()).context("reading the manifest from stdin")?;
        return Ok(vec![("stdin".into(), text)]);
    }
    let path = Path::new(f);
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {f}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        entries.sort();
        return entries
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok((p.display().to_string(), text))
            })
            .collect();
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {f}"))?;
    Ok(vec![(f.to_string(), text)])
}

pub async fn apply(ctx: &Ctx, args: ApplyArgs) -> Result<()> {
    let mut objects = read_objects(&args.files, &args.ns)?;
    // A manifest may hold a namespace and what goes in it, in any order.
    objects.sort_by_key(|o| !is_namespace(o));
    let ch = ctx.leader_channel().await?;
    for o in objects {
        let line = with_object!(o, obj => apply_one(ch.clone(), obj).await)?;
        println!("{line}");
    }
    Ok(())
}

/// Creates the object, or updates it keeping its status; says which.
async fn apply_one<K: ClientKind>(ch: tonic::transport::Channel, mut obj: K) -> Result<String> {
    let what = object_ref(&K::INFO, obj.name());
    obj.meta_mut().resource_version.clear();
    let current = K::get(
        ch.clone(),
        pb::GetRequest {
            namespace: obj.namespace().to_string(),
            name: obj.name().to_string(),
            serializable: false,
        },
    )
    .await;
    match current {
        Err(s) if Reason::of(&s) == Some(Reason::NotFound) => {
            match K::create(ch.clone(), obj.clone()).await {
                Ok(_) => Ok(format!("{what} created")),
                // Created by someone else in between: update it instead.
                Err(s) if Reason::of(&s) == Some(Reason::AlreadyExists) => {
                    update_one(ch, obj, &what, None).await
                }
                Err(s) => Err(status_error(s)),
            }
        }
        Err(s) => Err(status_error(s)),
        Ok(current) => update_one(ch, obj, &what, Some(current)).await,
    }
}

async fn update_one<K: ClientKind>(
    ch: tonic::transport::Channel,
    obj: K,
    what: &str,
    current: Option<K>,
) -> Result<String> {
    let before = current.and_then(|c| c.meta().map(|m| m.resource_version.clone()));
    let updated = K::update(ch, obj).await.map_err(status_error)?;
    let after = updated.meta().map(|m| m.resource_version.clone());
    if before.is_some() && before == after {
        Ok(format!("{what} unchanged"))
    } else {
        Ok(format!("{what} configured"))
    }
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    pub kind: Option<String>,
    pub names: Vec<String>,
    /// Delete the objects in these manifests.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    #[command(flatten)]
    pub ns: NamespaceArgs,
    /// Delete only if the object is still at this revision.
    #[arg(long)]
    pub resource_version: Option<String>,
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> Result<()> {
    let mut targets: Vec<(&'static berth_api::KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        let mut objects = read_objects(&args.files, &args.ns)?;
        // Deleting a namespace takes what is in it: its objects go first, so
        // that each object of the manifest is found.
        objects.sort_by_key(is_namespace);
        for o in objects {
            targets.push((o.info(), o.namespace().to_string(), o.name().to_string()));
        }
    } else {
        let Some(kind) = &args.kind else {
            bail!("say what to delete: berth delete KIND NAME, or berth delete -f FILE");
        };
        let info = kind_info(kind)?;
        if args.names.is_empty() {
            bail!(
                "name the {} to delete: berth delete {kind} NAME",
                info.plural
            );
        }
        let ns = if info.namespaced {
            args.ns.get()
        } else {
            String::new()
        };
        for n in &args.names {
            targets.push((info, ns.clone(), n.clone()));
        }
    }
    let ch = ctx.leader_channel().await?;
    let single = targets.len() == 1;
    let mut failed = None;
    for (info, namespace, name) in targets {
        let req = pb::DeleteRequest {
            namespace,
            name: name.clone(),
            resource_version: args.resource_version.clone().unwrap_or_default(),
        };
        let result = berth::for_kind!(info, K => K::delete(ch.clone(), req).await.map(|_| ()));
        match result {
            Ok(()) => println!("{} deleted", object_ref(info, &name)),
            Err(s) if single => return Err(status_error(s)),
            Err(s) => {
                eprintln!("error: {}", status_error(s));
                failed = Some(());
            }
        }
    }
    match failed {
        Some(()) => bail!("some of the objects were not deleted (see above)"),
        None => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// deployment (or deploy)
    pub kind: String,
    pub name: String,
    #[arg(long)]
    pub replicas: i32,
    #[command(flatten)]
    pub ns: NamespaceArgs,
}

pub async fn scale(ctx: &Ctx, args: ScaleArgs) -> Result<()> {
    let info = kind_info(&args.kind)?;
    if info.kind != "Deployment" {
        bail!("only deployments can be scaled, not {}", info.plural);
    }
    if args.replicas < 0 {
        bail!("--replicas must not be negative");
    }
    let ch = ctx.leader_channel().await?;
    // Read, change, write at that revision; a concurrent change means read again.
    for _ in 0..5 {
        let mut d = pb::Deployment::get(
            ch.clone(),
            pb::GetRequest {
                namespace: args.ns.get(),
                name: args.name.clone(),
                serializable: false,
            },
        )
        .await
        .map_err(status_error)?;
        d.spec.get_or_insert_default().replicas = Some(args.replicas);
        match pb::Deployment::update(ch.clone(), d).await {
            Ok(_) => {
                println!("{} scaled", object_ref(info, &args.name));
                return Ok(());
            }
            Err(s) if Reason::of(&s) == Some(Reason::Conflict) => continue,
            Err(s) => return Err(status_error(s)),
        }
    }
    bail!("conflict: the deployment kept changing; retry")
}
