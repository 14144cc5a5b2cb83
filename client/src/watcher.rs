//! A watcher in the shape of kube-runtime's: list, then follow changes from
//! the list's revision; after an error resume from the last revision seen
//! (on whichever controller the channel reaches), and list again when that
//! revision is no longer kept (OUT_OF_RANGE). Consumers see a `Listed`
//! (replace everything you know) followed by changes.

use std::time::Duration;

use berth_api::pb;
use berth_retry::Backoff;
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

use crate::connect::Connector;
use crate::objects::ClientKind;

/// Objects per page while listing.
const PAGE: i64 = 5_000;

#[derive(Debug)]
pub enum Change<K> {
    /// Everything there is, as of a fresh list: forget what came before.
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
}

/// Which objects to watch.
/// Pauses between failed lists and watches: 100 ms doubling to 5 s.
pub const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Empty: every namespace.
    pub namespace: String,
    pub label_selector: String,
    pub field_selector: String,
}

/// Feeds `tx` until its receiver is dropped.
pub async fn run<K: ClientKind>(conn: Connector, scope: Scope, tx: mpsc::Sender<Change<K>>) {
    let mut revision: Option<String> = None;
    let mut delay = RETRY;
    loop {
        let ch = match conn.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                tracing::warn!(kind = K::INFO.kind, error = %e, "no controller to watch; retrying");
                delay.wait().await;
                continue;
            }
        };
        let from = match revision.take() {
            Some(rev) => rev,
            None => match list_all::<K>(ch.clone(), &scope).await {
                Ok((items, rev)) => {
                    if tx.send(Change::Listed(items)).await.is_err() {
                        return;
                    }
                    rev
                }
                Err(status) => {
                    tracing::warn!(kind = K::INFO.kind, error = %status.message(), "list failed; retrying");
                    conn.failed(&status).await;
                    delay.wait().await;
                    continue;
                }
            },
        };
        let (last, error) = follow::<K>(ch.clone(), &scope, from, &tx, &mut delay).await;
        if tx.is_closed() {
            return;
        }
        match error {
            Some(status) if status.code() == Code::OutOfRange => {
                tracing::info!(
                    kind = K::INFO.kind,
                    "watch revision no longer kept; listing again"
                );
            }
            Some(status) => {
                conn.failed(&status).await;
                tracing::debug!(kind = K::INFO.kind, error = %status.message(), "watch interrupted; resuming");
                revision = Some(last);
            }
            None => revision = Some(last),
        }
        delay.wait().await;
    }
}

/// Follows changes after `from` until the stream ends or fails; returns the
/// last revision seen and the error, if any.
async fn follow<K: ClientKind>(
    ch: Channel,
    scope: &Scope,
    from: String,
    tx: &mpsc::Sender<Change<K>>,
    delay: &mut Backoff,
) -> (String, Option<tonic::Status>) {
    let req = pb::WatchRequest {
        namespace: scope.namespace.clone(),
        label_selector: scope.label_selector.clone(),
        field_selector: scope.field_selector.clone(),
        resource_version: from.clone(),
        bookmark_interval_seconds: 0,
    };
    let mut last = from;
    let mut stream = match K::watch(ch, req).await {
        Ok(s) => s,
        Err(status) => return (last, Some(status)),
    };
    while let Some(item) = stream.next().await {
        let (kind, obj) = match item {
            Ok(event) => event,
            Err(status) => return (last, Some(status)),
        };
        delay.reset();
        if let Some(rev) = obj.meta().map(|m| &m.resource_version) {
            if !rev.is_empty() {
                last.clone_from(rev);
            }
        }
        let change = match kind.as_str() {
            "ADDED" | "MODIFIED" => Change::Applied(obj),
            "DELETED" => Change::Deleted(obj),
            _ => continue,
        };
        if tx.send(change).await.is_err() {
            return (last, None);
        }
    }
    (last, None)
}

/// Every matching object, page by page, and the revision to watch from
/// (the first page's: later pages are newer, and replaying changes an
/// object already shows is harmless).
pub async fn list_all<K: ClientKind>(
    ch: Channel,
    scope: &Scope,
) -> Result<(Vec<K>, String), tonic::Status> {
    let mut items = Vec::new();
    let mut token = String::new();
    let mut revision = None;
    loop {
        let (page, meta) = K::list(
            ch.clone(),
            pb::ListRequest {
                namespace: scope.namespace.clone(),
                label_selector: scope.label_selector.clone(),
                field_selector: scope.field_selector.clone(),
                limit: PAGE,
                continue_token: token,
                serializable: false,
            },
        )
        .await?;
        items.extend(page);
        revision.get_or_insert(meta.resource_version);
        if meta.continue_token.is_empty() {
            return Ok((items, revision.unwrap_or_default()));
        }
        token = meta.continue_token;
    }
}
