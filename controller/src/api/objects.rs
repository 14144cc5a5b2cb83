//! The verbs of every kind, once, over the replicated store: objects are
//! protobuf-encoded under `/registry/<plural>/[<namespace>/]<name>`, and an
//! object's resourceVersion is the store revision of its last change.
//! Kinds encrypted at rest (Secrets) are sealed with the cluster's keyring
//! here, before a write is proposed, and opened here on every read.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use berth_api::kinds::list_prefix;
use berth_api::kinds::object_key;
use berth_api::kinds::Kind;
use berth_api::limits::MAX_OBJECT_BYTES;
use berth_api::limits::MAX_RESPONSE_BYTES;
use berth_api::pb;
use berth_api::selector::Field;
use berth_api::selector::FieldSelector;
use berth_api::selector::LabelSelector;
use berth_api::time::now_rfc3339;
use berth_api::Object;
use berth_api::Reason;
use berth_pki::Keyring;
use berth_raft::KeyRange;
use berth_raft::KeyValue;
use berth_raft::Op;
use berth_raft::Precondition;
use berth_raft::Store;
use berth_raft::Txn;
use berth_raft::TxnFailure;
use berth_raft::TxnOutcome;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::Status;

use crate::ipam;
use crate::ipam::Claim;
use crate::ipam::Ipam;
use berth_tls::Transport;

/// Read-modify-write rounds before an update without a precondition gives
/// up under contention.
const UPDATE_ATTEMPTS: usize = 8;
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses the allocator may pick before a create gives up: each lost
/// race (a claim another controller committed first) costs one.
const CLAIM_ATTEMPTS: usize = 16;

/// A watch's typed events: (ADDED | MODIFIED | DELETED | BOOKMARK, object).
pub type Events<K> = BoxStream<'static, Result<(String, K), Status>>;

pub struct Api<K> {
    pub store: Store,
    /// Assigns pod CIDRs (nodes) and ClusterIPs (services).
    ipam: Option<Ipam>,
    /// How this controller reaches agents (pods' logs); None in the API
    /// the controller uses for itself.
    pub agents: Option<Transport>,
    /// Seals and opens what kinds encrypted at rest store; None only for
    /// an `--insecure` controller (and the API the controller uses for
    /// itself, which reads no such kind).
    keyring: Option<Arc<Keyring>>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            ipam: self.ipam.clone(),
            agents: self.agents.clone(),
            keyring: self.keyring.clone(),
            kind: PhantomData,
        }
    }
}

fn failure_status(kind: &str, namespace: &str, name: &str, f: &TxnFailure) -> Status {
    let what = describe(kind, namespace, name);
    match f {
        TxnFailure::AlreadyExists { .. } => Reason::AlreadyExists.status(format!(
            "{what} already exists: use apply or update to change it"
        )),
        TxnFailure::NotFound { key, .. } if is_namespace_key(key) => Reason::NamespaceNotFound
            .status(format!(
                "namespace {namespace:?} does not exist: create it first"
            )),
        TxnFailure::NotFound { .. } => Reason::NotFound.status(format!("{what} not found")),
        TxnFailure::RevisionMismatch { key, .. } if is_namespace_key(key) => {
            Reason::NamespaceTerminating.status(format!(
                "namespace {namespace:?} is being deleted: no new objects can be created in it"
            ))
        }
        TxnFailure::RevisionMismatch {
            expected, actual, ..
        } => conflict(kind, namespace, name, *expected, *actual),
        TxnFailure::Invalid { reason } => Reason::Invalid.status(reason.clone()),
        TxnFailure::BindRefused { message, .. } => Reason::BindRefused.status(message.clone()),
    }
}

fn is_namespace_key(key: &[u8]) -> bool {
    key.starts_with(list_prefix(&<pb::Namespace as Object>::INFO, "").as_bytes())
}

/// Whether a transaction failed only because another object holds the
/// address it claimed: then that address joins `avoid` and the caller
/// picks again. An address the manifest asked for is the user's to change.
fn claim_lost(
    claim: Option<Claim>,
    failure: &TxnFailure,
    avoid: &mut HashSet<String>,
) -> Result<bool, Status> {
    match (claim, failure) {
        (Some(c), TxnFailure::AlreadyExists { key, .. }) if *key == c.key => {
            if c.requested {
                return Err(c.taken());
            }
            avoid.insert(String::from_utf8_lossy(&c.key).into_owned());
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn address_contention(kind: &str, namespace: &str, name: &str) -> Status {
    Status::unavailable(format!(
        "{}: every address picked for it was taken by a concurrent create first: retry",
        describe(kind, namespace, name)
    ))
}

/// A resourceVersion precondition that does not hold.
fn conflict(kind: &str, namespace: &str, name: &str, expected: u64, actual: u64) -> Status {
    Reason::Conflict.status(format!(
        "conflict: {} was changed (resourceVersion {actual}, not {expected}): re-read and retry",
        describe(kind, namespace, name)
    ))
}

pub fn describe(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{} {name:?}", kind.to_lowercase())
    } else {
        format!(
            "{} {name:?} in namespace {namespace:?}",
            kind.to_lowercase()
        )
    }
}

fn parse_revision(text: &str, field: &str) -> Result<Option<u64>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Reason::Invalid.status(format!(
            "{field} {text:?} is not a resourceVersion (a number)"
        ))
    })
}

impl<K: Object> Api<K> {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            ipam: None,
            agents: None,
            keyring: None,
            kind: PhantomData,
        }
    }

    /// The API as served: creates and updates assign addresses, the agents
    /// are reached with `agents`, and values at rest are sealed with
    /// `keyring`.
    pub fn serving(
        store: Store,
        ipam: Ipam,
        agents: Transport,
        keyring: Option<Arc<Keyring>>,
    ) -> Self {
        Self {
            store,
            ipam: Some(ipam),
            agents: Some(agents),
            keyring,
            kind: PhantomData,
        }
    }

    pub(super) fn namespace_of(&self, requested: &str) -> String {
        if K::INFO.namespaced && requested.is_empty() {
            "default".to_string()
        } else if K::INFO.namespaced {
            requested.to_string()
        } else {
            String::new()
        }
    }

    fn key(&self, namespace: &str, name: &str) -> Vec<u8> {
        object_key(&K::INFO, namespace, name).into_bytes()
    }

    fn encode(&self, obj: &K) -> Result<Vec<u8>, Status> {
        let key = self.key(obj.namespace(), obj.name());
        stored_value(obj, &key, self.keyring.as_deref())
    }

    /// Writes `obj` under its key if the key is still at `rev`.
    pub(super) fn put_at(&self, obj: &K, rev: u64) -> Result<Op, Status> {
        Ok(Op::Put {
            key: self.key(obj.namespace(), obj.name()),
            value: self.encode(obj)?,
            precondition: Precondition::ModRevision(rev),
        })
    }

    /// Validates, then runs `ops`; maps a refusal to the status a client
    /// can act on.
    async fn commit(&self, namespace: &str, name: &str, ops: Vec<Op>) -> Result<u64, Status> {
        self.try_commit(ops)
            .await?
            .map_err(|f| failure_status(K::INFO.kind, namespace, name, &f))
    }

    async fn try_commit(&self, ops: Vec<Op>) -> Result<Result<u64, TxnFailure>, Status> {
        Ok(match self.store.txn(Txn { ops }).await? {
            TxnOutcome::Committed { revision, .. } => Ok(revision),
            TxnOutcome::Failed(f) => Err(f),
        })
    }

    /// The address `obj` must claim, filled in; none for kinds without.
    async fn assign(&self, obj: &mut K, avoid: &HashSet<String>) -> Result<Option<Claim>, Status> {
        match &self.ipam {
            Some(ipam) => ipam.assign(obj, avoid).await,
            None => Ok(None),
        }
    }

    async fn read(
        &self,
        namespace: &str,
        name: &str,
        serializable: bool,
    ) -> Result<Option<(K, u64)>, Status> {
        let key = self.key(namespace, name);
        let result = self
            .store
            .range(KeyRange::key(key), 1, serializable)
            .await?;
        match result.kvs.first() {
            Some(kv) => Ok(Some((
                decode::<K>(kv, self.keyring.as_deref())?,
                kv.mod_revision,
            ))),
            None => Ok(None),
        }
    }

    fn not_found(&self, namespace: &str, name: &str) -> Status {
        Reason::NotFound.status(format!(
            "{} not found",
            describe(K::INFO.kind, namespace, name)
        ))
    }

    /// The namespace must exist and be Active: its revision, checked again
    /// when the write applies.
    async fn namespace_revision(
        &self,
        namespace: &str,
        fresh: bool,
    ) -> Result<Option<u64>, Status> {
        if !K::INFO.namespaced {
            return Ok(None);
        }
        let ns = Api::<pb::Namespace>::new(self.store.clone());
        match ns.read(namespace, namespace, !fresh).await? {
            None => Err(Reason::NamespaceNotFound.status(format!(
                "namespace {namespace:?} does not exist: create it first (berth apply -f a Namespace manifest)"
            ))),
            Some((n, _)) if n.meta().is_some_and(|m| !m.deletion_timestamp.is_empty()) => {
                Err(Reason::NamespaceTerminating.status(format!(
                    "namespace {namespace:?} is being deleted: no new objects can be created in it"
                )))
            }
            Some((_, rev)) => Ok(Some(rev)),
        }
    }

    fn admit(&self, obj: &mut K) -> Result<(), Status> {
        let ns = self.namespace_of(obj.namespace());
        obj.meta_mut().namespace = ns;
        obj.apply_defaults();
        obj.validate()
            .map_err(|e| Reason::Invalid.status(format!("invalid {}: {e}", K::INFO.kind)))
    }

    pub async fn create(&self, mut obj: K) -> Result<K, Status> {
        if K::INFO.id != Kind::Node {
            // Status is written by the system, through update-status; an
            // agent registering its Node may bring the node's capacity.
            obj.clear_status();
        }
        self.admit(&mut obj)?;
        let (namespace, name) = (obj.namespace().to_string(), obj.name().to_string());
        let meta = obj.meta_mut();
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.creation_timestamp = now_rfc3339();
        meta.deletion_timestamp.clear();
        meta.generation = 1;
        let key = self.key(&namespace, &name);
        let mut avoid = HashSet::new();
        for _ in 0..CLAIM_ATTEMPTS {
            let mut next = obj.clone();
            let claim = self.assign(&mut next, &avoid).await?;
            let value = self.encode(&next)?;
            let extra: Vec<Op> = claim.iter().map(|c| c.op(&key)).collect();
            match self.create_once(&namespace, &name, value, &extra).await? {
                Ok(revision) => {
                    next.set_type_meta();
                    next.meta_mut().resource_version = revision.to_string();
                    return Ok(next);
                }
                Err(f) if claim_lost(claim, &f, &mut avoid)? => {}
                Err(f) => return Err(failure_status(K::INFO.kind, &namespace, &name, &f)),
            }
        }
        Err(address_contention(K::INFO.kind, &namespace, &name))
    }

    /// The namespace is read locally first: the Check confirms it when the
    /// write applies, so a stale answer costs only a second, linearizable
    /// try.
    async fn create_once(
        &self,
        namespace: &str,
        name: &str,
        value: Vec<u8>,
        extra: &[Op],
    ) -> Result<Result<u64, TxnFailure>, Status> {
        let first = self
            .try_create(namespace, name, value.clone(), extra, false)
            .await;
        let stale_namespace = match &first {
            Err(s) => matches!(
                s.code(),
                tonic::Code::NotFound | tonic::Code::FailedPrecondition
            ),
            Ok(Err(
                TxnFailure::NotFound { key, .. } | TxnFailure::RevisionMismatch { key, .. },
            )) => is_namespace_key(key),
            Ok(_) => false,
        };
        if stale_namespace {
            return self.try_create(namespace, name, value, extra, true).await;
        }
        first
    }

    async fn try_create(
        &self,
        namespace: &str,
        name: &str,
        value: Vec<u8>,
        extra: &[Op],
        fresh: bool,
    ) -> Result<Result<u64, TxnFailure>, Status> {
        let mut ops = Vec::with_capacity(2 + extra.len());
        if let Some(rev) = self.namespace_revision(namespace, fresh).await? {
            ops.push(Op::Check {
                key: object_key(&pb::Namespace::INFO, "", namespace).into_bytes(),
                precondition: Precondition::ModRevision(rev),
            });
        }
        ops.push(Op::Put {
            key: self.key(namespace, name),
            value,
            precondition: Precondition::Absent,
        });
        ops.extend_from_slice(extra);
        self.try_commit(ops).await
    }

    /// The stored object for a write: the local copy first (the write's
    /// revision precondition catches a stale one), the leader's on a retry.
    async fn read_for_write(
        &self,
        namespace: &str,
        name: &str,
        attempt: usize,
    ) -> Result<Option<(K, u64)>, Status> {
        self.read(namespace, name, attempt == 0).await
    }

    pub async fn get(&self, req: pb::GetRequest) -> Result<K, Status> {
        let namespace = self.namespace_of(&req.namespace);
        self.read(&namespace, &req.name, req.serializable)
            .await?
            .map(|(o, _)| o)
            .ok_or_else(|| self.not_found(&namespace, &req.name))
    }

    /// Objects matching the request, at most `limit`, and where to go on.
    pub async fn list(&self, req: pb::ListRequest) -> Result<(Vec<K>, pb::ListMeta), Status> {
        let labels = LabelSelector::parse(&req.label_selector)
            .map_err(|e| Reason::Invalid.status(e.to_string()))?;
        let fields = FieldSelector::parse(&req.field_selector, K::INFO.id == Kind::Pod)
            .map_err(|e| Reason::Invalid.status(e.to_string()))?;
        if req.limit < 0 {
            return Err(Reason::Invalid.status("limit must not be negative"));
        }
        let prefix = KeyRange::prefix(list_prefix(&K::INFO, &req.namespace).into_bytes());
        let mut start = prefix.start.clone();
        if !req.continue_token.is_empty() {
            let after = decode_continue(&req.continue_token)?;
            if !prefix.contains(&after) {
                return Err(Reason::Invalid.status(
                    "the continue token belongs to another listing: list again without it",
                ));
            }
            start = after;
            start.push(0);
        }
        let limit = req.limit as usize;
        let page = if limit == 0 {
            10_000
        } else {
            (limit + 1).max(64)
        };
        let mut items = Vec::new();
        let mut bytes = 0;
        let mut revision = None;
        let mut next = None;
        'pages: loop {
            let range = KeyRange {
                start: start.clone(),
                end: prefix.end.clone(),
            };
            // Only the first page waits for a read index: later pages are
            // at least as new.
            let serializable = req.serializable || revision.is_some();
            let result = self.store.range(range, page, serializable).await?;
            revision.get_or_insert(result.revision);
            for kv in &result.kvs {
                let Some(obj) = decode_or_skip::<K>(kv, self.keyring.as_deref()) else {
                    continue;
                };
                if !self.selected(&obj, &labels, &fields) {
                    continue;
                }
                if limit > 0 && items.len() == limit {
                    let last = items.last().map(|o: &K| self.key(o.namespace(), o.name()));
                    next = Some(encode_continue(&last.unwrap_or_default()));
                    break 'pages;
                }
                bytes += obj.encoded_len();
                if bytes > MAX_RESPONSE_BYTES {
                    return Err(too_large_list::<K>(&req.namespace));
                }
                items.push(obj);
            }
            match result.kvs.last() {
                Some(last) if result.more => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok((
            items,
            pb::ListMeta {
                resource_version: revision.unwrap_or_default().to_string(),
                continue_token: next.unwrap_or_default(),
            },
        ))
    }

    fn selected(&self, obj: &K, labels: &LabelSelector, fields: &FieldSelector) -> bool {
        let empty = Default::default();
        let obj_labels = obj.meta().map_or(&empty, |m| &m.labels);
        labels.matches(obj_labels)
            && fields.matches(|f| match f {
                Field::NodeName => obj.node_name().to_string(),
                Field::Name => obj.name().to_string(),
                Field::Namespace => obj.namespace().to_string(),
            })
    }

    /// Replaces the object but its status (or only its status), keeping what
    /// the server owns; retries a lost race unless the caller set a
    /// resourceVersion precondition.
    pub async fn update(&self, mut obj: K, status_only: bool) -> Result<K, Status> {
        if !status_only {
            self.admit(&mut obj)?;
        } else {
            let ns = self.namespace_of(obj.namespace());
            obj.meta_mut().namespace = ns;
        }
        let (namespace, name) = (obj.namespace().to_string(), obj.name().to_string());
        if name.is_empty() {
            return Err(Reason::Invalid.status("metadata.name is required"));
        }
        let precondition =
            parse_revision(&obj.meta_mut().resource_version, "metadata.resourceVersion")?;
        let mut avoid = HashSet::new();
        for attempt in 0..UPDATE_ATTEMPTS {
            let (stored, rev) = match self.read_for_write(&namespace, &name, attempt).await? {
                Some(found) => found,
                None if attempt == 0 => continue,
                None => return Err(self.not_found(&namespace, &name)),
            };
            if let Some(expected) = precondition.filter(|e| *e != rev) {
                // The local copy may be behind: decide on the leader's.
                if attempt == 0 {
                    continue;
                }
                return Err(conflict(K::INFO.kind, &namespace, &name, expected, rev));
            }
            let mut next = if status_only {
                let mut next = stored.clone();
                next.take_status_from(&obj);
                next.validate().map_err(|e| {
                    Reason::Invalid.status(format!("invalid {} status: {e}", K::INFO.kind))
                })?;
                next
            } else {
                self.merge_update(&stored, obj.clone())?
            };
            let claim = match ipam::claim_key(&stored) {
                None => self.assign(&mut next, &avoid).await?,
                Some(_) => None,
            };
            if next == stored {
                // Nothing to write, if the local copy was current.
                if attempt == 0 {
                    continue;
                }
                return Ok(stored);
            }
            let key = self.key(&namespace, &name);
            let mut ops = vec![Op::Put {
                key: key.clone(),
                value: self.encode(&next)?,
                precondition: Precondition::ModRevision(rev),
            }];
            ops.extend(claim.iter().map(|c| c.op(&key)));
            let failure = match self.try_commit(ops).await? {
                Ok(revision) => {
                    let mut next = next;
                    next.set_type_meta();
                    next.meta_mut().resource_version = revision.to_string();
                    return Ok(next);
                }
                Err(f) => f,
            };
            if claim_lost(claim, &failure, &mut avoid)? {
                continue;
            }
            match failure_status(K::INFO.kind, &namespace, &name, &failure) {
                s if s.code() == tonic::Code::Aborted && precondition.is_none() => continue,
                s => return Err(s),
            }
        }
        Err(Reason::Conflict.status(format!(
            "conflict: {} kept changing during the change: re-read and retry",
            describe(K::INFO.kind, &namespace, &name)
        )))
    }

    fn merge_update(&self, stored: &K, mut next: K) -> Result<K, Status> {
        next.keep_assigned(stored);
        next.check_update(stored)
            .map_err(|e| Reason::Invalid.status(format!("invalid {} update: {e}", K::INFO.kind)))?;
        if next.node_name() != stored.node_name() {
            return Err(Reason::Invalid.status(format!(
                "spec.nodeName cannot be changed by an update (it is {:?}): a pending pod is placed with Bind",
                stored.node_name()
            )));
        }
        let old = stored.meta().cloned().unwrap_or_default();
        next.take_status_from(stored);
        let spec_changed = next.spec_bytes() != stored.spec_bytes();
        let meta = next.meta_mut();
        meta.uid = old.uid;
        meta.creation_timestamp = old.creation_timestamp;
        meta.deletion_timestamp = old.deletion_timestamp;
        meta.resource_version = old.resource_version;
        meta.generation = old.generation + i64::from(spec_changed);
        Ok(next)
    }

    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<K, Status> {
        let namespace = self.namespace_of(&req.namespace);
        let name = req.name.as_str();
        let precondition = parse_revision(&req.resource_version, "resourceVersion")?;
        for attempt in 0..UPDATE_ATTEMPTS {
            let (stored, rev) = match self.read_for_write(&namespace, name, attempt).await? {
                Some(found) => found,
                None if attempt == 0 => continue,
                None => return Err(self.not_found(&namespace, name)),
            };
            if let Some(expected) = precondition.filter(|e| *e != rev) {
                // The local copy may be behind: decide on the leader's.
                if attempt == 0 {
                    continue;
                }
                return Err(conflict(K::INFO.kind, &namespace, name, expected, rev));
            }
            let mut ops = vec![Op::Delete {
                key: self.key(&namespace, name),
                precondition: Precondition::ModRevision(rev),
            }];
            ops.extend(ipam::release_op(&stored));
            match self.commit(&namespace, name, ops).await {
                Ok(_) => return Ok(stored),
                Err(s) if s.code() == tonic::Code::Aborted && precondition.is_none() => continue,
                Err(s) => return Err(s),
            }
        }
        Err(Reason::Conflict.status(format!(
            "conflict: {} kept changing during the change: re-read and retry",
            describe(K::INFO.kind, &namespace, name)
        )))
    }

    /// Events for a watch request as typed (type, object) pairs, with a
    /// BOOKMARK every interval carrying the revision seen so far.
    pub fn watch(&self, req: pb::WatchRequest) -> Result<Events<K>, Status> {
        let labels = LabelSelector::parse(&req.label_selector)
            .map_err(|e| Reason::Invalid.status(e.to_string()))?;
        let fields = FieldSelector::parse(&req.field_selector, K::INFO.id == Kind::Pod)
            .map_err(|e| Reason::Invalid.status(e.to_string()))?;
        let start = parse_revision(&req.resource_version, "resourceVersion")?;
        let from = start.map_or(0, |r| r + 1);
        let range = KeyRange::prefix(list_prefix(&K::INFO, &req.namespace).into_bytes());
        let changes = self.store.watch(range, from)?;
        let interval = match req.bookmark_interval_seconds {
            n if n > 0 => Duration::from_secs(n as u64),
            _ => DEFAULT_BOOKMARK_INTERVAL,
        };
        let this = self.clone();
        // A watch "from now" has no revision to report until the store's
        // first progress; a bookmark before that would let a resuming
        // client skip changes still on their way.
        let initial = start.unwrap_or(0);
        Ok(typed_events(
            this, changes, labels, fields, interval, initial,
        ))
    }
}

/// A list that cannot be answered in one response: found out while
/// reading, before the whole of it is held in memory.
fn too_large_list<K: Object>(namespace: &str) -> Status {
    let place = if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {namespace:?}")
    };
    Reason::TooLarge.status(format!(
        "the {}{place} are more than a response holds ({} MiB): list in pages with limit and continue (`berth get --chunk-size 500`)",
        K::INFO.plural,
        MAX_RESPONSE_BYTES >> 20
    ))
}

fn encode_continue(key: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_continue(token: &str) -> Result<Vec<u8>, Status> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| {
            Reason::Invalid.status("the continue token is not valid: list again without it")
        })
}

type Changes = BoxStream<'static, Result<berth_raft::WatchBatch, berth_raft::StoreError>>;

/// Merges store changes with a bookmark timer into typed events.
fn typed_events<K: Object>(
    api: Api<K>,
    changes: Changes,
    labels: LabelSelector,
    fields: FieldSelector,
    interval: Duration,
    initial: u64,
) -> Events<K> {
    struct State<K> {
        api: Api<K>,
        changes: Changes,
        labels: LabelSelector,
        fields: FieldSelector,
        ticker: tokio::time::Interval,
        seen: u64,
        pending: std::collections::VecDeque<(String, K)>,
        done: bool,
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    let state = State {
        api,
        changes,
        labels,
        fields,
        ticker,
        seen: initial,
        pending: Default::default(),
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(ev) = st.pending.pop_front() {
                return Some((Ok(ev), st));
            }
            if st.done {
                return None;
            }
            tokio::select! {
                // Changes first: a bookmark must not overtake events that
                // are already waiting.
                biased;
                batch = st.changes.next() => match batch {
                    None => return None,
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(Status::from(e)), st));
                    }
                    Some(Ok(batch)) => {
                        st.seen = st.seen.max(batch.revision);
                        for e in batch.events {
                            match typed_event::<K>(&e, st.api.keyring.as_deref()) {
                                Some((t, obj)) if st.api.selected(&obj, &st.labels, &st.fields) => {
                                    st.pending.push_back((t, obj));
                                }
                                _ => {}
                            }
                        }
                    }
                },
                _ = st.ticker.tick(), if st.seen > 0 => {
                    let mut bookmark = K::default();
                    bookmark.set_type_meta();
                    bookmark.meta_mut().resource_version = st.seen.to_string();
                    return Some((Ok(("BOOKMARK".to_string(), bookmark)), st));
                }
            }
        }
    }))
}

/// The bytes stored for `obj` under `key`: its encoding without what every
/// read derives, sealed if its kind is encrypted at rest.
fn stored_value<K: Object>(
    obj: &K,
    key: &[u8],
    keyring: Option<&Keyring>,
) -> Result<Vec<u8>, Status> {
    let mut stored = obj.clone();
    // Derived on every read; storing them would only waste bytes.
    stored.meta_mut().resource_version.clear();
    stored.set_type_meta();
    let bytes = stored.encode_to_vec();
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(Reason::TooLarge.status(format!(
            "{} is {} bytes encoded; objects are limited to {MAX_OBJECT_BYTES} bytes (1 MiB): split it",
            describe(K::INFO.kind, obj.namespace(), obj.name()),
            bytes.len()
        )));
    }
    match keyring {
        Some(keyring) if K::ENCRYPTED_AT_REST => keyring.seal(key, &bytes).map_err(|e| {
            Status::internal(format!(
                "cannot encrypt {}: {e}",
                K::INFO.kind.to_lowercase()
            ))
        }),
        _ => Ok(bytes),
    }
}

/// An object as the store holds it, with its type and resource version.
fn decode<K: Object>(kv: &KeyValue, keyring: Option<&Keyring>) -> Result<K, Status> {
    let at = || {
        format!(
            "stored {} at {:?}",
            K::INFO.kind,
            String::from_utf8_lossy(&kv.key)
        )
    };
    let opened;
    let bytes = match keyring {
        _ if !berth_pki::is_sealed(&kv.value) => kv.value.as_slice(),
        Some(keyring) => {
            opened = keyring
                .open(&kv.key, &kv.value)
                .map_err(|e| Status::internal(format!("{} cannot be decrypted: {e}", at())))?;
            opened.as_slice()
        }
        None => {
            return Err(Status::internal(format!(
                "{} is encrypted and this controller has no keyring (it runs --insecure)",
                at()
            )))
        }
    };
    let mut obj = K::decode(bytes)
        .map_err(|e| Status::internal(format!("{} cannot be decoded: {e}", at())))?;
    obj.set_type_meta();
    obj.meta_mut().resource_version = kv.mod_revision.to_string();
    Ok(obj)
}

/// `decode` for lists and watches: one stored value that does not decode
/// (written around the API, or restored from a broken backup) is logged,
/// counted and left out, instead of failing every list and watch of its
/// kind.
fn decode_or_skip<K: Object>(kv: &KeyValue, keyring: Option<&Keyring>) -> Option<K> {
    match decode(kv, keyring) {
        Ok(obj) => Some(obj),
        Err(e) => {
            tracing::error!(kind = K::INFO.kind, error = %e.message(), "skipping a stored object");
            metrics::counter!("berth_controller_undecodable_objects_total", "kind" => K::INFO.kind)
                .increment(1);
            None
        }
    }
}

fn typed_event<K: Object>(e: &berth_raft::Event, keyring: Option<&Keyring>) -> Option<(String, K)> {
    let obj = decode_or_skip::<K>(&e.kv, keyring)?;
    let t = match e.kind {
        berth_raft::EventKind::Delete => "DELETED",
        berth_raft::EventKind::Put if e.kv.create_revision == e.kv.mod_revision => "ADDED",
        berth_raft::EventKind::Put => "MODIFIED",
    };
    Some((t.to_string(), obj))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    fn stored(value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: b"/registry/configmaps/default/c".to_vec(),
            value,
            create_revision: 3,
            mod_revision: 7,
            version: 2,
        }
    }

    #[test]
    fn a_value_that_does_not_decode_is_left_out_and_a_good_one_kept() {
        assert!(decode_or_skip::<pb::ConfigMap>(&stored(vec![0xff, 0xff, 0xff]), None).is_none());
        let err = decode::<pb::ConfigMap>(&stored(vec![0xff]), None).unwrap_err();
        assert!(
            err.message()
                .contains("stored ConfigMap at \"/registry/configmaps/default/c\""),
            "{err:?}"
        );
        let mut cm = pb::ConfigMap::default();
        cm.meta_mut().name = "c".into();
        let back = decode_or_skip::<pb::ConfigMap>(&stored(cm.encode_to_vec()), None).unwrap();
        assert_eq!(back.name(), "c");
        assert_eq!(back.meta().unwrap().resource_version, "7");
        assert_eq!(back.kind, "ConfigMap");
        let event = berth_raft::Event {
            kind: berth_raft::EventKind::Put,
            kv: stored(b"\x0a\xff".to_vec()),
        };
        assert!(typed_event::<pb::ConfigMap>(&event, None).is_none());
    }

    #[test]
    fn a_secret_is_stored_sealed_to_its_key_and_read_back_whole() {
        let keyring = Keyring::generate().unwrap();
        let mut secret = pb::Secret::default();
        secret.meta_mut().name = "s".into();
        secret.meta_mut().namespace = "default".into();
        secret.data.insert("password".into(), "c2VzYW1l".into());
        let key = b"/registry/secrets/default/s";
        let value = stored_value(&secret, key, Some(&keyring)).unwrap();
        assert!(!value.windows(8).any(|w| w == b"c2VzYW1l"), "sealed");
        let kv = |value: Vec<u8>| KeyValue {
            key: key.to_vec(),
            value,
            create_revision: 3,
            mod_revision: 4,
            version: 1,
        };
        let back = decode::<pb::Secret>(&kv(value.clone()), Some(&keyring)).unwrap();
        assert_eq!(back.data, secret.data);
        assert_eq!(back.meta().unwrap().resource_version, "4");
        // Without the keyring, or under another key, it is skipped, not
        // read as garbage.
        assert!(decode_or_skip::<pb::Secret>(&kv(value.clone()), None).is_none());
        let moved = KeyValue {
            key: b"/registry/secrets/other/s".to_vec(),
            ..kv(value)
        };
        let err = decode::<pb::Secret>(&moved, Some(&keyring)).unwrap_err();
        assert!(err.message().contains("cannot be decrypted"), "{err:?}");
        // Other kinds are stored as they are, whatever the keyring.
        let cm = stored_value(&pb::ConfigMap::default(), key, Some(&keyring)).unwrap();
        assert!(!berth_pki::is_sealed(&cm));
        // An --insecure controller stores Secrets unsealed.
        let plain = stored_value(&secret, key, None).unwrap();
        assert!(plain.windows(8).any(|w| w == b"c2VzYW1l"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 1024,
            failure_persistence: None,
            ..Default::default()
        })]

        /// A list's continue token and a watch's resourceVersion come from
        /// clients: anything is a token or revision, or INVALID_ARGUMENT.
        #[test]
        fn continue_tokens_and_revisions_parse_or_are_refused(text in "\\PC{0,40}") {
            if let Err(s) = decode_continue(&text) {
                proptest::prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
            }
            if let Err(s) = parse_revision(&text, "resourceVersion") {
                proptest::prop_assert_eq!(s.code(), tonic::Code::InvalidArgument);
                proptest::prop_assert!(s.message().contains("is not a resourceVersion"));
            }
        }

        /// Whatever a store holds (a damaged backup, a write around the
        /// API), reading it is an object or an error.
        #[test]
        fn any_stored_value_is_an_object_or_an_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            sealed in proptest::prelude::any::<bool>(),
        ) {
            let keyring = Keyring::generate().unwrap();
            let value = if sealed {
                let mut v = b"berth:enc:aes256gcm:v1:".to_vec();
                v.extend_from_slice(&bytes);
                v
            } else {
                bytes
            };
            let _ = decode::<pb::Pod>(&stored(value.clone()), None);
            let _ = decode::<pb::Secret>(&stored(value), Some(&keyring));
        }
    }
}
