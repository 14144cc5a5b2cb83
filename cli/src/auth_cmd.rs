//! `berth auth can-i`: asks the cluster whether a verb on a kind is
//! allowed, as `kubectl auth can-i` does.

use berth_api::KindInfo;
use berth_proto::security as pb;
use berth_proto::security::access_client::AccessClient;
use clap::Subcommand;

use crate::verbs::status_error;
use crate::verbs::Ctx;

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Print yes (exit 0) or no (exit 1): whether VERB on KIND is allowed.
    CanI {
        /// get, list, watch, create, update, patch, delete, or "*".
        verb: String,
        /// A kind (pods, deployments.apps, "*" for all) with an optional
        /// /NAME.
        kind: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Ask across every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// A subresource: status, binding.
        #[arg(long, default_value = "")]
        subresource: String,
        /// Ask for this user instead (needs `impersonate` on users).
        #[arg(long = "as")]
        as_user: Option<String>,
        /// A group of the --as user; repeatable.
        #[arg(long = "as-group", requires = "as_user")]
        as_group: Vec<String>,
    },
}

/// What RBAC calls `kind`: its API group, plural and whether it lives in
/// namespaces. A kind Berth does not serve is asked about as written
/// (`secrets`, `jobs.batch`), as kubectl does, with a warning.
fn resource(kind: &str) -> (String, String, bool) {
    if kind == "*" {
        return ("*".into(), "*".into(), true);
    }
    if let Some(info) = KindInfo::lookup(kind) {
        return (info.api_group().into(), info.plural.into(), info.namespaced);
    }
    eprintln!("Warning: Berth serves no kind {kind:?}; asking about it as written");
    let (plural, group) = kind.split_once('.').unwrap_or((kind, ""));
    (group.into(), plural.to_ascii_lowercase(), true)
}

pub async fn run(cmd: AuthCommand, ctx: &Ctx) -> anyhow::Result<bool> {
    let AuthCommand::CanI {
        verb,
        kind,
        namespace,
        all_namespaces,
        subresource,
        as_user,
        as_group,
    } = cmd;
    let (kind, name) = kind.split_once('/').unwrap_or((&kind, ""));
    let (api_group, resource, namespaced) = resource(kind);
    let namespace = match (namespaced, all_namespaces) {
        (true, false) => namespace.unwrap_or_else(|| "default".into()),
        _ => String::new(),
    };
    let review = pb::AccessReview {
        verb,
        api_group,
        resource,
        subresource,
        namespace,
        name: name.to_string(),
        user: as_user.unwrap_or_default(),
        groups: as_group,
    };
    let result = AccessClient::new(ctx.channel().await?)
        .review(review)
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", if result.allowed { "yes" } else { "no" });
    Ok(result.allowed)
}
