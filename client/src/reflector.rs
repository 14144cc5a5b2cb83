//! A reflector in the shape of kube-runtime's: a local copy of every
//! object of a kind, kept by a watcher, that many controllers read, with a
//! broadcast of what changed so that each can queue the work it implies.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::RwLock;

use berth_api::Object;
use tokio::sync::broadcast;
use tokio::sync::mpsc;
use tokio::sync::watch;

use crate::connect::Connector;
use crate::objects::ClientKind;
use crate::watcher;
use crate::watcher::Change;

/// What a reflector's subscribers hear.
#[derive(Clone, Debug)]
pub enum Event<K> {
    /// The copy was replaced by a fresh list: look at everything again.
    Relisted,
    /// An object was added, changed or deleted (its last state).
    Changed(Arc<K>),
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub fn key<K: Object>(obj: &K) -> String {
    let m = obj.meta();
    let (ns, name) = m.map_or(("", ""), |m| (m.namespace.as_str(), m.name.as_str()));
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

fn revision<K: Object>(obj: &K) -> u64 {
    obj.meta()
        .and_then(|m| m.resource_version.parse().ok())
        .unwrap_or(0)
}

pub struct Reflector<K> {
    objects: Arc<RwLock<HashMap<String, Arc<K>>>>,
    listed: watch::Receiver<bool>,
    events: broadcast::Sender<Event<K>>,
}

impl<K> Clone for Reflector<K> {
    fn clone(&self) -> Self {
        Self {
            objects: self.objects.clone(),
            listed: self.listed.clone(),
            events: self.events.clone(),
        }
    }
}

impl<K: ClientKind> Reflector<K> {
    /// Starts watching `scope` in the background.
    pub fn start(conn: Connector, scope: watcher::Scope) -> Self {
        let objects: Arc<RwLock<HashMap<String, Arc<K>>>> = Arc::default();
        let (listed_tx, listed) = watch::channel(false);
        let (events, _) = broadcast::channel(16_384);
        let (tx, mut rx) = mpsc::channel(4096);
        tokio::spawn(watcher::run::<K>(conn, scope, tx));
        let (store, sender) = (objects.clone(), events.clone());
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let event = match change {
                    Change::Listed(items) => {
                        let fresh = items.into_iter().map(|o| (key(&o), Arc::new(o))).collect();
                        *store.write().expect("reflector lock") = fresh;
                        listed_tx.send_replace(true);
                        Event::Relisted
                    }
                    Change::Applied(o) => {
                        let o = Arc::new(o);
                        let mut all = store.write().expect("reflector lock");
                        let k = key(&*o);
                        // An assumed write may be newer than this event.
                        if all
                            .get(&k)
                            .is_none_or(|old| revision(&**old) <= revision(&*o))
                        {
                            all.insert(k, o.clone());
                        }
                        drop(all);
                        Event::Changed(o)
                    }
                    Change::Deleted(o) => {
                        store.write().expect("reflector lock").remove(&key(&o));
                        Event::Changed(Arc::new(o))
                    }
                };
                let _ = sender.send(event);
            }
        });
        Self {
            objects,
            listed,
            events,
        }
    }

    /// A reflector that holds `objects` as listed and watches nothing: for
    /// unit tests of code that reads one.
    pub fn fixed(objects: Vec<K>) -> Self {
        let (_, listed) = watch::channel(true);
        let (events, _) = broadcast::channel(16);
        Self {
            objects: Arc::new(RwLock::new(
                objects
                    .into_iter()
                    .map(|o| (key(&o), Arc::new(o)))
                    .collect(),
            )),
            listed,
            events,
        }
    }

    /// Waits for the first list.
    pub async fn ready(&self) {
        let mut listed = self.listed.clone();
        let _ = listed.wait_for(|l| *l).await;
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event<K>> {
        self.events.subscribe()
    }

    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.objects
            .read()
            .expect("reflector lock")
            .get(key)
            .cloned()
    }

    /// Every object, in no order.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.objects
            .read()
            .expect("reflector lock")
            .values()
            .cloned()
            .collect()
    }

    /// Records the result of this process's own write ahead of its watch
    /// event, so that a controller does not act twice on stale state.
    pub fn assume(&self, obj: K) {
        let obj = Arc::new(obj);
        self.objects
            .write()
            .expect("reflector lock")
            .insert(key(&*obj), obj);
    }

    /// Records this process's own delete ahead of its watch event.
    pub fn forget(&self, key: &str) {
        self.objects.write().expect("reflector lock").remove(key);
    }
}
