//! A controller runtime in the shape of kube-runtime's: a reconcile
//! function per object, run from a de-duplicated queue of keys that the
//! watched kinds fill, so that a reconciler is one function and a
//! registration.
//!
//! ```text
//! Controller::new(deployments)          // reconcile(deployment, ctx) per key
//!     .owns(pods)                       // a pod's change queues its controller owner
//!     .resync_every(RESYNC)             // and everything, every RESYNC
//!     .gated_by(leader)                 // only while this process holds the lease
//!     .run(reconcile, ctx)
//! ```
//!
//! The loop is level-triggered: a change only says which keys to look at,
//! and the reconcile reads the current state from the reflectors. Keys are
//! queued at most once; changes that arrive within the batch window of the
//! first make one round, in which every queued key is reconciled once. A
//! reflector that lists again, or a subscriber that lagged behind its
//! broadcast, queues every key, as does a periodic resync and the moment
//! this process takes the lease. A reconcile returns what to do next
//! ([`Action`]); one that fails is retried after a jittered back-off that
//! doubles per failure of that key, and its error is logged.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use berth_api::Object;
use berth_retry::Backoff;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::election::LeaderState;
use crate::objects::ClientKind;
use crate::reflector;
use crate::reflector::Event;
use crate::reflector::Reflector;

/// What to do with a key after its reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reconcile it again after this long, whatever changes.
    Requeue(Duration),
    /// Reconcile it again when something it depends on changes.
    AwaitChange,
}

/// Where the objects a controller reconciles come from.
trait Source<T>: Send + Sync + 'static {
    /// The object under `key`; None once it is gone.
    fn get(&self, key: &str) -> Option<Arc<T>>;
    /// Every key there is now.
    fn keys(&self) -> Vec<String>;
}

impl<K: ClientKind> Source<K> for Reflector<K> {
    fn get(&self, key: &str) -> Option<Arc<K>> {
        Reflector::get(self, key)
    }

    fn keys(&self) -> Vec<String> {
        self.all().iter().map(|o| reflector::key(&**o)).collect()
    }
}

/// The one key of a controller that reconciles a whole state at once.
struct Singleton;

impl Source<()> for Singleton {
    fn get(&self, _: &str) -> Option<Arc<()>> {
        Some(Arc::new(()))
    }

    fn keys(&self) -> Vec<String> {
        vec![String::new()]
    }
}

/// What a watched kind's change asks of the queue.
#[derive(Debug)]
enum Trigger {
    Keys(Vec<String>),
    Everything,
}

type Subscribe = Box<dyn FnOnce(&mut JoinSet<()>, mpsc::UnboundedSender<Trigger>) + Send>;
type Ready = futures::future::BoxFuture<'static, ()>;

/// Waits applied between reconciles of a key, and after failures.
#[derive(Clone, Debug)]
struct Timing {
    /// Changes arriving this long after the first make one round.
    batch_window: Duration,
    /// Every key is queued this often; None: never.
    resync: Option<Duration>,
    /// The wait after a key's failed reconcile, doubling per failure.
    retry: Backoff,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            batch_window: Duration::from_millis(20),
            resync: Some(Duration::from_secs(30)),
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        }
    }
}

pub struct Controller<T> {
    name: &'static str,
    source: Arc<dyn Source<T>>,
    subscriptions: Vec<Subscribe>,
    /// The first lists of every reflector the reconcile reads: a reconcile
    /// before them would act on nothing (create pods that exist, say).
    ready: Vec<Ready>,
    leader: Option<LeaderState>,
    timing: Timing,
}

impl<K: ClientKind> Controller<K> {
    /// Reconciles every object of `main`'s kind; its changes queue their
    /// own keys.
    pub fn new(name: &'static str, main: Reflector<K>) -> Self {
        Self::new_filtered(name, main, |_| true)
    }

    /// Reconciles the objects of `main`'s kind that `wanted` picks: the
    /// changes of others queue nothing (they are still reconciled when
    /// everything is, and may decide nothing).
    pub fn new_filtered(
        name: &'static str,
        main: Reflector<K>,
        wanted: impl Fn(&K) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::over(name, Arc::new(main.clone())).watches(main, move |o: &K| {
            if wanted(o) {
                vec![reflector::key(o)]
            } else {
                Vec::new()
            }
        })
    }

    /// A change of an object whose controller owner is of this kind queues
    /// the owner.
    pub fn owns<O: ClientKind>(self, owned: Reflector<O>) -> Self {
        self.watches(owned, |o: &O| {
            controller_owner::<K, O>(o).into_iter().collect()
        })
    }
}

impl Controller<()> {
    /// One reconcile for a whole state (a node's routes and service rules),
    /// run again for every change of the kinds it is `triggered_by`.
    pub fn singleton(name: &'static str) -> Self {
        Self::over(name, Arc::new(Singleton))
    }

    pub fn triggered_by<O: ClientKind>(self, related: Reflector<O>) -> Self {
        self.watches(related, |_: &O| vec![String::new()])
    }
}

impl<T: Send + Sync + 'static> Controller<T> {
    /// Reconciles what `source` holds; only the kinds it `watches` queue
    /// keys.
    fn over(name: &'static str, source: Arc<dyn Source<T>>) -> Self {
        Self {
            name,
            source,
            subscriptions: Vec::new(),
            ready: Vec::new(),
            leader: None,
            timing: Timing::default(),
        }
    }

    /// A change of `related` queues the keys `map` names.
    pub fn watches<O: ClientKind>(
        mut self,
        related: Reflector<O>,
        map: impl Fn(&O) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self = self.reads(related.clone());
        self.subscriptions.push(subscription(related, map));
        self
    }

    /// The reconcile reads `cache`, whose changes queue nothing: rounds
    /// wait for its first list.
    pub fn reads<O: ClientKind>(mut self, cache: Reflector<O>) -> Self {
        self.ready
            .push(Box::pin(async move { cache.ready().await }));
        self
    }

    pub fn resync_every(mut self, period: Duration) -> Self {
        self.timing.resync = Some(period);
        self
    }

    pub fn batch_window(mut self, window: Duration) -> Self {
        self.timing.batch_window = window;
        self
    }

    /// Reconciles only while `leader` holds a valid lease.
    pub fn gated_by(mut self, leader: LeaderState) -> Self {
        self.leader = Some(leader);
        self
    }

    /// Runs `reconcile` for queued keys until every watched reflector has
    /// stopped (or the task is aborted).
    pub async fn run<C, F, Fut, E>(self, reconcile: F, ctx: Arc<C>)
    where
        C: Send + Sync + 'static,
        F: Fn(Arc<T>, Arc<C>) -> Fut,
        Fut: Future<Output = Result<Action, E>>,
        E: Display,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut feeds = JoinSet::new();
        for subscribe in self.subscriptions {
            subscribe(&mut feeds, tx.clone());
        }
        drop(tx);
        let mut queue = Queue::default();
        let mut gate = Gate::new(self.leader);
        let mut resync = self.timing.resync.map(|p| {
            let mut t = tokio::time::interval_at(Instant::now() + p, p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut failures: HashMap<String, u32> = HashMap::new();
        let mut ready = Some(futures::future::join_all(self.ready));
        // Whether the last round ran with the lease held: taking it queues
        // everything, as what changed while standing by was not looked at.
        let mut active = false;
        loop {
            if active && !queue.has_work() {
                let next = queue.next_due();
                tokio::select! {
                    t = rx.recv() => match t {
                        Some(t) => queue.take(t),
                        None => return,
                    },
                    _ = tick(&mut resync) => queue.everything = true,
                    _ = sleep_until(next) => {}
                    _ = gate.changed() => {}
                }
                // Whatever else arrives in the window makes one round.
                tokio::time::sleep(self.timing.batch_window).await;
                while let Ok(t) = rx.try_recv() {
                    queue.take(t);
                }
            }
            if !gate.open() {
                active = false;
                gate.wait_open().await;
            }
            if let Some(ready) = ready.take() {
                ready.await;
            }
            if !active {
                active = true;
                queue.everything = true;
            }
            queue.release_due(Instant::now());
            for key in queue.round(&*self.source) {
                let Some(obj) = self.source.get(&key) else {
                    failures.remove(&key);
                    continue;
                };
                match reconcile(obj, ctx.clone()).await {
                    Ok(action) => {
                        failures.remove(&key);
                        if let Action::Requeue(after) = action {
                            queue.schedule(key, Instant::now() + after);
                        }
                    }
                    Err(e) => {
                        let n = failures.entry(key.clone()).or_default();
                        let wait = self.timing.retry.delay(*n);
                        *n = n.saturating_add(1);
                        tracing::warn!(controller = self.name, %key, error = %e, retry_in = ?wait, "reconcile failed");
                        queue.schedule(key, Instant::now() + wait);
                    }
                }
            }
        }
    }
}

/// Forwards `reflector`'s changes, mapped to keys, into the queue's
/// channel, from a task of the controller's own.
fn subscription<O: ClientKind>(
    reflector: Reflector<O>,
    map: impl Fn(&O) -> Vec<String> + Send + Sync + 'static,
) -> Subscribe {
    Box::new(move |tasks, tx| {
        let mut events = reflector.subscribe();
        tasks.spawn(async move {
            loop {
                let trigger = match events.recv().await {
                    Ok(Event::Changed(o)) => match map(&o) {
                        keys if keys.is_empty() => continue,
                        keys => Trigger::Keys(keys),
                    },
                    Ok(Event::Relisted) | Err(RecvError::Lagged(_)) => Trigger::Everything,
                    Err(RecvError::Closed) => return,
                };
                if tx.send(trigger).is_err() {
                    return;
                }
            }
        });
    })
}

/// `namespace/name` of `obj`'s controller owner when it is of kind `K`.
pub fn controller_owner<K: Object, O: Object>(obj: &O) -> Option<String> {
    let m = obj.meta()?;
    let owner = m
        .owner_references
        .iter()
        .find(|o| o.kind == K::INFO.kind && o.controller == Some(true))?;
    Some(if K::INFO.namespaced {
        format!("{}/{}", m.namespace, owner.name)
    } else {
        owner.name.clone()
    })
}

async fn tick(resync: &mut Option<tokio::time::Interval>) {
    match resync {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Keys waiting for a round: queued now, or scheduled for later.
#[derive(Default)]
struct Queue {
    now: Vec<String>,
    queued: HashSet<String>,
    everything: bool,
    later: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
}

impl Queue {
    fn take(&mut self, t: Trigger) {
        match t {
            Trigger::Everything => self.everything = true,
            Trigger::Keys(keys) => {
                for k in keys {
                    self.push(k);
                }
            }
        }
    }

    fn push(&mut self, key: String) {
        if self.queued.insert(key.clone()) {
            self.now.push(key);
        }
    }

    fn has_work(&self) -> bool {
        self.everything || !self.now.is_empty()
    }

    /// Schedules `key` at `at`, or sooner if it already is.
    fn schedule(&mut self, key: String, at: Instant) {
        if let Some(&old) = self.due.get(&key) {
            if old <= at {
                return;
            }
            self.later.remove(&(old, key.clone()));
        }
        self.due.insert(key.clone(), at);
        self.later.insert((at, key));
    }

    fn next_due(&self) -> Option<Instant> {
        self.later.first().map(|(at, _)| *at)
    }

    fn release_due(&mut self, now: Instant) {
        while let Some((at, key)) = self.later.first().cloned() {
            if at > now {
                break;
            }
            self.later.pop_first();
            self.due.remove(&key);
            self.push(key);
        }
    }

    /// The keys of this round, each once.
    fn round<T: 'static>(&mut self, source: &dyn Source<T>) -> Vec<String> {
        if std::mem::take(&mut self.everything) {
            for k in source.keys() {
                self.push(k);
            }
        }
        self.queued.clear();
        std::mem::take(&mut self.now)
    }
}

/// The lease a controller needs to reconcile, if any.
struct Gate {
    leader: Option<LeaderState>,
}

impl Gate {
    fn new(leader: Option<LeaderState>) -> Self {
        Self { leader }
    }

    fn open(&self) -> bool {
        self.leader
            .as_ref()
            .is_none_or(|l| l.borrow().is_some_and(|l| l.is_valid()))
    }

    async fn changed(&mut self) {
        match &mut self.leader {
            Some(l) => {
                if l.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Waits until the lease is held and valid.
    async fn wait_open(&mut self) {
        while !self.open() {
            let Some(l) = &mut self.leader else { return };
            let valid_until = l.borrow().map(|l| l.valid_until);
            match valid_until {
                // Held, but the renewal is late: it may come any moment.
                Some(_) => {
                    tokio::select! {
                        r = l.changed() => if r.is_err() { std::future::pending::<()>().await },
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                None => {
                    if l.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Keys(std::sync::Mutex<Vec<String>>);

    impl Source<String> for Keys {
        fn get(&self, key: &str) -> Option<Arc<String>> {
            let keys = self.0.lock().unwrap();
            keys.contains(&key.to_string())
                .then(|| Arc::new(key.to_string()))
        }

        fn keys(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn a_key_is_queued_once_per_round_and_everything_takes_every_key() {
        let source = Keys(std::sync::Mutex::new(vec!["a".into(), "b".into()]));
        let mut q = Queue::default();
        q.take(Trigger::Keys(vec!["a".into(), "a".into()]));
        q.take(Trigger::Keys(vec!["a".into()]));
        assert_eq!(q.round(&source), ["a"]);
        assert!(!q.has_work());
        q.take(Trigger::Everything);
        q.take(Trigger::Keys(vec!["a".into()]));
        let mut all = q.round(&source);
        all.sort();
        assert_eq!(all, ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_keys_come_due_in_order_and_the_sooner_schedule_wins() {
        let source = Keys(std::sync::Mutex::new(vec![]));
        let mut q = Queue::default();
        let t0 = Instant::now();
        q.schedule("late".into(), t0 + Duration::from_secs(10));
        q.schedule("soon".into(), t0 + Duration::from_secs(5));
        q.schedule("soon".into(), t0 + Duration::from_secs(8));
        q.schedule("late".into(), t0 + Duration::from_secs(2));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_secs(2)));
        q.release_due(t0 + Duration::from_secs(3));
        assert_eq!(q.round(&source), ["late"]);
        q.release_due(t0 + Duration::from_secs(5));
        assert_eq!(q.round(&source), ["soon"]);
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn an_owner_is_found_by_its_kind_and_controller_flag() {
        use berth_api::pb;
        let mut pod = pb::Pod::default();
        let m = pod.meta_mut();
        m.namespace = "shop".into();
        m.owner_references = vec![
            pb::OwnerReference {
                kind: "Deployment".into(),
                name: "not-controller".into(),
                controller: Some(false),
                ..Default::default()
            },
            pb::OwnerReference {
                kind: "Deployment".into(),
                name: "web".into(),
                controller: Some(true),
                ..Default::default()
            },
        ];
        assert_eq!(
            controller_owner::<pb::Deployment, _>(&pod).as_deref(),
            Some("shop/web")
        );
        assert_eq!(controller_owner::<pb::Service, _>(&pod), None);
    }
}
