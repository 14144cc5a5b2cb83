//! Pending pods: an active queue in arrival order, and the pods that could
//! not be placed, each waiting out its back-off (1 s doubling to 10 s by
//! default) or until the cluster changes in a way that may make room.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::VecDeque;

use berth_api::pb;
use berth_retry::Backoff;
use tokio::time::Instant;

use crate::cache::pod_key;
use crate::cache::PodKey;

pub struct Pending {
    pub pod: pb::Pod,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The unschedulable message last written to the pod's status.
    pub reported: Option<String>,
}

#[derive(Default)]
pub struct Queue {
    active: VecDeque<PodKey>,
    /// Every pending pod, active or backing off.
    pods: HashMap<PodKey, Pending>,
    /// Backing off until the instant.
    waiting: HashMap<PodKey, Instant>,
    /// The same, in the order they end.
    ends: BTreeSet<(Instant, PodKey)>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn active_len(&self) -> usize {
        self.active.len()
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Adds or refreshes a pending pod; a new one is tried at once.
    pub fn upsert(&mut self, pod: pb::Pod) {
        let key = pod_key(&pod);
        match self.pods.get_mut(&key) {
            Some(p) => p.pod = pod,
            None => {
                self.pods.insert(
                    key.clone(),
                    Pending {
                        pod,
                        attempts: 0,
                        reported: None,
                    },
                );
                self.active.push_back(key);
            }
        }
    }

    /// Keeps only the pods `keep` says yes to.
    pub fn retain(&mut self, keep: impl Fn(&PodKey) -> bool) {
        self.pods.retain(|k, _| keep(k));
        self.waiting.retain(|k, _| keep(k));
        self.ends.retain(|(_, k)| keep(k));
    }

    fn stop_waiting(&mut self, key: &str) {
        if let Some((key, until)) = self.waiting.remove_entry(key) {
            self.ends.remove(&(until, key));
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Pending> {
        self.stop_waiting(key);
        // Left in `active` if there: popping skips keys no longer pending.
        self.pods.remove(key)
    }

    /// The next pod to try.
    pub fn pop(&mut self) -> Option<(PodKey, &mut Pending)> {
        while let Some(key) = self.active.pop_front() {
            if self.waiting.contains_key(&key) || !self.pods.contains_key(&key) {
                continue;
            }
            let p = self.pods.get_mut(&key).expect("checked");
            return Some((key, p));
        }
        None
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Pending> {
        self.pods.get_mut(key)
    }

    /// Takes a pod out of the running until its back-off passes.
    pub fn back_off(&mut self, key: PodKey, backoff: &Backoff) {
        let Some(p) = self.pods.get_mut(&key) else {
            return;
        };
        let delay = backoff.delay(p.attempts);
        p.attempts += 1;
        self.stop_waiting(&key);
        let until = Instant::now() + delay;
        self.waiting.insert(key.clone(), until);
        self.ends.insert((until, key));
    }

    /// Tries a pod again at once (its bind failed for a passing reason).
    pub fn retry(&mut self, key: PodKey) {
        if self.pods.contains_key(&key) {
            self.stop_waiting(&key);
            self.active.push_back(key);
        }
    }

    /// Moves pods whose back-off passed to the active queue; with
    /// `cluster_changed` (a node came or changed, a pod went), every
    /// waiting pod, since room may have appeared.
    pub fn release(&mut self, cluster_changed: bool) {
        let now = Instant::now();
        while let Some((until, _)) = self.ends.first() {
            if *until > now && !cluster_changed {
                break;
            }
            let (_, key) = self.ends.pop_first().expect("not empty");
            self.waiting.remove(&key);
            self.active.push_back(key);
        }
    }

    /// When the next back-off ends.
    pub fn next_release(&self) -> Option<Instant> {
        self.ends.first().map(|(until, _)| *until)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pod(name: &str) -> pb::Pod {
        berth_testkit::objects::pod(name).build()
    }

    #[tokio::test(start_paused = true)]
    async fn backed_off_pods_return_after_their_delay_or_a_change() {
        let mut q = Queue::default();
        q.upsert(pod("a"));
        q.upsert(pod("b"));
        let (a, _) = q.pop().unwrap();
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10)).exact();
        q.back_off(a.clone(), &backoff);
        let (b, _) = q.pop().unwrap();
        assert_eq!(&*b, "default/b");
        assert!(q.pop().is_none(), "a waits");
        q.release(false);
        assert!(q.pop().is_none(), "a still waits");
        tokio::time::advance(Duration::from_millis(1001)).await;
        q.release(false);
        assert_eq!(&*q.pop().unwrap().0, "default/a");
        // The second failure waits twice as long; a change ends it early.
        q.back_off(a.clone(), &backoff);
        assert_eq!(
            q.next_release(),
            Some(Instant::now() + Duration::from_secs(2))
        );
        q.release(true);
        assert_eq!(&*q.pop().unwrap().0, "default/a");
        assert_eq!(q.len(), 2);
        q.remove("default/a");
        q.remove("default/b");
        assert!(q.is_empty() && q.pop().is_none());
    }
}
