//! `berth get`: tables, `-o json|yaml|wide|name`, and `-w`, a watch that
//! survives the loss of its controller by resuming from the last revision
//! it saw on another one.

use std::time::Instant;

use anyhow::bail;
use anyhow::Result;
use berth::for_kind;
use berth::objects::ClientKind;
use berth_api::pb;
use clap::Args;
use futures::StreamExt;

use super::kind_info;
use super::object_ref;
use super::status_error;
use super::table;
use super::table::Row;
use super::Ctx;
use super::RECONNECT_FOR;

#[derive(Args, Debug)]
pub struct GetArgs {
    /// pods, nodes, deployments, services, endpoints, configmaps, secrets, namespaces,
    /// leases, roles, clusterroles, rolebindings, clusterrolebindings
    /// (singular and short names work too).
    pub kind: String,
    pub name: Option<String>,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. app=web,tier!=db.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. spec.nodeName=node-1.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// wide, json, yaml or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// After listing, print changes as they happen.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Read from the answering controller's own state (may be stale).
    #[arg(long)]
    pub serializable: bool,
    /// Ask for at most this many objects per call.
    #[arg(long, default_value_t = 500)]
    pub chunk_size: i64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Table { wide: bool },
    Json,
    Yaml,
    Name,
}

fn output(o: Option<&str>) -> Result<Output> {
    Ok(match o {
        None => Output::Table { wide: false },
        Some("wide") => Output::Table { wide: true },
        Some("json") => Output::Json,
        Some("yaml") => Output::Yaml,
        Some("name") => Output::Name,
        Some(other) => bail!("unknown output format {other:?}: use wide, json, yaml or name"),
    })
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> Result<()> {
    let info = kind_info(&args.kind)?;
    for_kind!(info, K => get_kind::<K>(ctx, &args).await)
}

fn namespace_of(args: &GetArgs, namespaced: bool) -> String {
    if !namespaced || args.all_namespaces {
        String::new()
    } else {
        args.namespace.clone().unwrap_or_else(|| "default".into())
    }
}

fn field_selector(args: &GetArgs) -> String {
    let mut parts: Vec<String> = args.field_selector.iter().cloned().collect();
    if let Some(name) = &args.name {
        parts.push(format!("metadata.name={name}"));
    }
    parts.join(",")
}

async fn get_kind<K: ClientKind + Row>(ctx: &Ctx, args: &GetArgs) -> Result<()> {
    let out = output(args.output.as_deref())?;
    let namespace = namespace_of(args, K::INFO.namespaced);
    let ch = ctx.channel().await?;
    if let (Some(name), false) = (&args.name, args.watch) {
        let obj = K::get(
            ch,
            pb::GetRequest {
                namespace,
                name: name.clone(),
                serializable: args.serializable,
            },
        )
        .await
        .map_err(status_error)?;
        print_objects(&[obj], out, args.all_namespaces, true, None)?;
        return Ok(());
    }
    let mut items = Vec::new();
    let mut token = String::new();
    let revision = loop {
        let (page, meta) = K::list(
            ch.clone(),
            pb::ListRequest {
                namespace: namespace.clone(),
                label_selector: args.selector.clone().unwrap_or_default(),
                field_selector: field_selector(args),
                limit: args.chunk_size.max(0),
                continue_token: token,
                serializable: args.serializable,
            },
        )
        .await
        .map_err(status_error)?;
        items.extend(page);
        if meta.continue_token.is_empty() {
            break meta.resource_version;
        }
        token = meta.continue_token;
    };
    if items.is_empty() && !args.watch && matches!(out, Output::Table { .. }) {
        if namespace.is_empty() {
            eprintln!("No resources found");
        } else {
            eprintln!("No resources found in {namespace} namespace.");
        }
        return Ok(());
    }
    print_objects(&items, out, args.all_namespaces, true, Some(&revision))?;
    if args.watch {
        watch::<K>(ctx, args, namespace, revision, out).await?;
    }
    Ok(())
}

fn print_objects<K: Row>(
    items: &[K],
    out: Output,
    all_ns: bool,
    header: bool,
    list_rv: Option<&str>,
) -> Result<()> {
    match out {
        Output::Table { wide } => {
            let mut headers = K::headers(wide);
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|o| {
                    let mut r = o.row(wide);
                    if all_ns && K::INFO.namespaced {
                        r.insert(0, o.namespace().to_string());
                    }
                    r
                })
                .collect();
            if all_ns && K::INFO.namespaced {
                headers.insert(0, "NAMESPACE");
            }
            table::print(&headers, &rows, header);
        }
        Output::Name => {
            for o in items {
                println!("{}", object_ref(&K::INFO, o.name()));
            }
        }
        Output::Json | Output::Yaml => {
            let values = match list_rv {
                Some(rv) => vec![serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": items,
                    "metadata": {"resourceVersion": rv},
                })],
                None => items
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<_, _>>()?,
            };
            for value in values {
                if out == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&value)?);
                } else {
                    print!("---\n{}", serde_yaml_ng::to_string(&value)?);
                }
            }
        }
    }
    Ok(())
}

/// A failure of the connection or of the controller, not of the request:
/// worth trying again, on another controller if need be. (A controller
/// killed mid-connect shows up as Unknown or Cancelled, not Unavailable.)
fn is_transient(s: &tonic::Status) -> bool {
    !matches!(
        s.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::Unimplemented
            | tonic::Code::FailedPrecondition
            | tonic::Code::OutOfRange
    )
}

/// The watcher fell too far behind: prints a fresh listing and returns its
/// revision to watch from.
async fn relist<K: ClientKind + Row>(
    ctx: &Ctx,
    args: &GetArgs,
    namespace: &str,
    out: Output,
) -> Result<String> {
    let ch = ctx.channel().await?;
    let (items, meta) = K::list(
        ch,
        pb::ListRequest {
            namespace: namespace.to_string(),
            label_selector: args.selector.clone().unwrap_or_default(),
            field_selector: field_selector(args),
            ..Default::default()
        },
    )
    .await
    .map_err(status_error)?;
    print_objects(&items, out, args.all_namespaces, false, None)?;
    Ok(meta.resource_version)
}

/// Prints changes from `revision` on, reconnecting (to any controller) and
/// resuming where it left off; lists again if the revision is gone.
async fn watch<K: ClientKind + Row>(
    ctx: &Ctx,
    args: &GetArgs,
    namespace: String,
    mut revision: String,
    out: Output,
) -> Result<()> {
    let request = |rv: &str| pb::WatchRequest {
        namespace: namespace.clone(),
        label_selector: args.selector.clone().unwrap_or_default(),
        field_selector: field_selector(args),
        resource_version: rv.to_string(),
        bookmark_interval_seconds: 2,
    };
    let mut lost_since: Option<Instant> = None;
    loop {
        let stream = match ctx.channel().await {
            Ok(ch) => K::watch(ch, request(&revision)).await,
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(s) if s.code() == tonic::Code::OutOfRange => {
                revision = relist::<K>(ctx, args, &namespace, out).await?;
                continue;
            }
            Err(s) if is_transient(&s) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(status_error(s));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(s) => return Err(status_error(s)),
        };
        lost_since = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok((kind, obj)) => {
                    if let Some(rv) = obj
                        .meta()
                        .map(|m| m.resource_version.clone())
                        .filter(|r| !r.is_empty())
                    {
                        revision = rv;
                    }
                    if kind != "BOOKMARK" {
                        print_objects(&[obj], out, args.all_namespaces, false, None)?;
                    }
                }
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    revision = relist::<K>(ctx, args, &namespace, out).await?;
                    break;
                }
                // The controller went away: resume elsewhere.
                Err(_) => break,
            }
        }
    }
}
