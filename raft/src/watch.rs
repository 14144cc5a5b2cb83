//! The watch hub: every change the state machine applies is published here
//! with its revision. A bounded buffer of recent events lets a watcher
//! resume from a revision it has already seen; a revision older than the
//! buffer is refused so the watcher lists again instead of missing changes.
//!
//! Live watchers read from a broadcast channel that carries each revision's
//! events as one item, so a transaction's events (a namespace deletion's
//! hundreds of deletes share one revision) always reach a watcher together.
//! A watcher that falls behind the channel under a burst of writes resumes
//! from the buffer where it left off; only one that falls behind the buffer
//! too has to list again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::error::TryRecvError;

use crate::error::Compacted;
use crate::types::Event;
use crate::types::KeyRange;

/// Events kept for watchers that resume.
pub const DEFAULT_BUFFER_EVENTS: usize = 100_000;
/// Bytes of keys and values kept for watchers that resume: large values
/// must not let the buffer grow without bound.
pub const DEFAULT_BUFFER_BYTES: usize = 256 << 20;
/// Revisions the live channel holds for a watcher that is slow to read.
const LIVE_REVISIONS: usize = 16 * 1024;
/// How often an idle watch reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Events a watch batch is cut at (between revisions, never inside one).
const MAX_BATCH_EVENTS: usize = 1024;

struct Buffer {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Every event with a revision above this is in `events` (or was
    /// published after it).
    complete_after: u64,
    /// The state machine's revision when the last event was published.
    revision: u64,
}

/// What live subscribers receive.
#[derive(Clone, Debug)]
pub enum HubItem {
    /// Every event of one revision, in the order its transaction made them.
    Revision(Arc<[Arc<Event>]>),
    /// The state was replaced by a snapshot; subscribers must list again.
    Reset { revision: u64 },
}

#[derive(Clone)]
pub struct WatchHub {
    buffer: Arc<Mutex<Buffer>>,
    live: broadcast::Sender<HubItem>,
}

/// What a new subscriber gets: the buffered backlog it asked for, and a
/// receiver for everything published after it.
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<HubItem>,
    /// Revision the backlog ends at.
    pub revision: u64,
}

impl WatchHub {
    pub fn new(revision: u64, capacity: usize, max_bytes: usize) -> Self {
        let (live, _) = broadcast::channel(LIVE_REVISIONS);
        Self {
            buffer: Arc::new(Mutex::new(Buffer {
                events: VecDeque::with_capacity(capacity.min(4096)),
                capacity,
                max_bytes,
                bytes: 0,
                complete_after: revision,
                revision,
            })),
            live,
        }
    }

    /// Publishes one applied batch's events, in revision order.
    pub fn publish(&self, events: Vec<Event>, revision: u64) {
        let mut buf = self.buffer.lock().expect("watch buffer lock");
        let mut same_revision: Vec<Arc<Event>> = Vec::new();
        for event in events {
            let event = Arc::new(event);
            buf.bytes += event_bytes(&event);
            buf.events.push_back(event.clone());
            while buf.events.len() > buf.capacity
                || (buf.bytes > buf.max_bytes && buf.events.len() > 1)
            {
                let Some(old) = buf.events.pop_front() else {
                    break;
                };
                buf.bytes -= event_bytes(&old);
                buf.complete_after = old.revision();
            }
            if same_revision
                .first()
                .is_some_and(|first| first.revision() != event.revision())
            {
                self.send_revision(std::mem::take(&mut same_revision));
            }
            same_revision.push(event);
        }
        if !same_revision.is_empty() {
            self.send_revision(same_revision);
        }
        buf.revision = revision;
    }

    fn send_revision(&self, events: Vec<Arc<Event>>) {
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(HubItem::Revision(events.into()));
    }

    /// The state was replaced by a snapshot: earlier events no longer
    /// describe how it came to be.
    pub fn reset(&self, revision: u64) {
        let mut buf = self.buffer.lock().expect("watch buffer lock");
        buf.events.clear();
        buf.bytes = 0;
        buf.complete_after = revision;
        buf.revision = revision;
        let _ = self.live.send(HubItem::Reset { revision });
    }

    pub fn revision(&self) -> u64 {
        self.buffer.lock().expect("watch buffer lock").revision
    }

    /// Events with revision >= `start` (0: from now on).
    pub fn subscribe(&self, start: u64) -> Result<Subscription, Compacted> {
        let buf = self.buffer.lock().expect("watch buffer lock");
        let live = self.live.subscribe();
        if start == 0 || start > buf.revision {
            return Ok(Subscription {
                backlog: Vec::new(),
                live,
                revision: buf.revision,
            });
        }
        if start <= buf.complete_after {
            return Err(Compacted {
                requested: start,
                oldest: buf.complete_after + 1,
            });
        }
        let skip = buf.events.partition_point(|e| e.revision() < start);
        Ok(Subscription {
            backlog: buf.events.iter().skip(skip).cloned().collect(),
            live,
            revision: buf.revision,
        })
    }

    /// Changes in `range` from revision `start` (0: from now on), in
    /// batches. The stream ends with `Compacted` when the watcher fell
    /// behind the buffer or the state was replaced by a snapshot; the
    /// caller lists again.
    pub fn watch(
        &self,
        range: KeyRange,
        start: u64,
    ) -> Result<impl Stream<Item = WatchItem> + Send + 'static, Compacted> {
        let sub = self.subscribe(start)?;
        // A controller that has not applied the watcher's start yet must
        // not send it what it has already seen elsewhere.
        let floor = sub.revision.max(start.saturating_sub(1));
        let follow = Follow {
            hub: self.clone(),
            live: sub.live,
            range,
            seen: if sub.backlog.is_empty() {
                floor
            } else {
                start - 1
            },
            floor,
            queued: sub.backlog.into(),
            reported: floor,
            last_sent: Instant::now(),
            done: false,
        };
        Ok(futures::stream::unfold(follow, Follow::next))
    }
}

fn event_bytes(e: &Event) -> usize {
    e.kv.key.len() + e.kv.value.len()
}

/// Changes from a watch, and how far it has seen: every change in its range
/// up to `revision` has been delivered. A batch may be empty, only to report
/// progress (at most once a second, and within a second of the last change
/// elsewhere), so that a watcher resumes from a recent revision.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    pub events: Vec<Arc<Event>>,
    pub revision: u64,
}

pub type WatchItem = Result<WatchBatch, Compacted>;

/// One watcher's place in the hub's history.
struct Follow {
    hub: WatchHub,
    live: broadcast::Receiver<HubItem>,
    range: KeyRange,
    /// Every event up to this revision has been looked at.
    seen: u64,
    /// Where the live channel takes over from the backlog.
    floor: u64,
    /// Buffered events still to be looked at (the backlog asked for, or
    /// what was missed while behind the live channel).
    queued: VecDeque<Arc<Event>>,
    /// The revision of the last batch sent.
    reported: u64,
    last_sent: Instant,
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(WatchItem, Self)> {
        if self.done {
            return None;
        }
        let mut events = Vec::new();
        loop {
            if let Err(c) = self.take_ready(&mut events) {
                return Some(self.fail(c));
            }
            if !events.is_empty() {
                return Some((Ok(self.batch(events)), self));
            }
            let received = if self.seen > self.reported {
                // Unreported progress goes out when the throttle allows,
                // even if nothing else changes.
                let due = tokio::time::Instant::from_std(self.last_sent + PROGRESS_EVERY);
                match tokio::time::timeout_at(due, self.live.recv()).await {
                    Ok(r) => r,
                    Err(_) => return Some((Ok(self.batch(Vec::new())), self)),
                }
            } else {
                self.live.recv().await
            };
            let taken = match received {
                Ok(item) => self.take(item, &mut events),
                Err(RecvError::Lagged(_)) => self.resume(),
                Err(RecvError::Closed) => return None,
            };
            if let Err(c) = taken {
                return Some(self.fail(c));
            }
            if events.is_empty()
                && self.seen > self.reported
                && self.last_sent.elapsed() >= PROGRESS_EVERY
            {
                return Some((Ok(self.batch(Vec::new())), self));
            }
        }
    }

    /// Takes what needs no waiting: the queued events, then whatever the
    /// live channel already holds, up to about a batch.
    fn take_ready(&mut self, events: &mut Vec<Arc<Event>>) -> Result<(), Compacted> {
        loop {
            self.take_queued(events);
            if !self.queued.is_empty() || events.len() >= MAX_BATCH_EVENTS {
                return Ok(());
            }
            match self.live.try_recv() {
                Ok(item) => self.take(item, events)?,
                Err(TryRecvError::Lagged(_)) => self.resume()?,
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return Ok(()),
            }
        }
    }

    fn take_queued(&mut self, events: &mut Vec<Arc<Event>>) {
        while let Some(next) = self.queued.front() {
            if events.len() >= MAX_BATCH_EVENTS && next.revision() > self.seen {
                return;
            }
            let e = self.queued.pop_front().expect("the front was just seen");
            self.offer(e, events);
        }
        self.seen = self.seen.max(self.floor);
    }

    fn take(&mut self, item: HubItem, events: &mut Vec<Arc<Event>>) -> Result<(), Compacted> {
        match item {
            HubItem::Revision(revision) => {
                // At or below the floor: the watcher has seen it elsewhere.
                if revision.first().is_some_and(|e| e.revision() > self.seen) {
                    for e in revision.iter() {
                        self.offer(e.clone(), events);
                    }
                }
                Ok(())
            }
            HubItem::Reset { revision } => Err(Compacted {
                requested: self.seen + 1,
                oldest: revision + 1,
            }),
        }
    }

    fn offer(&mut self, e: Arc<Event>, events: &mut Vec<Arc<Event>>) {
        self.seen = self.seen.max(e.revision());
        if self.range.contains(&e.kv.key) {
            events.push(e);
        }
    }

    /// Fell behind the live channel: carry on from the buffer, where
    /// everything after `seen` still is unless this watcher is far behind.
    fn resume(&mut self) -> Result<(), Compacted> {
        let sub = self.hub.subscribe(self.seen + 1)?;
        metrics::counter!("berth_store_watch_resumed_total").increment(1);
        self.queued.extend(sub.backlog);
        self.live = sub.live;
        Ok(())
    }

    fn batch(&mut self, events: Vec<Arc<Event>>) -> WatchBatch {
        self.last_sent = Instant::now();
        self.reported = self.seen;
        WatchBatch {
            events,
            revision: self.seen,
        }
    }

    fn fail(mut self, c: Compacted) -> (WatchItem, Self) {
        self.done = true;
        (Err(c), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EventKind;
    use crate::types::KeyValue;

    fn ev(rev: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: format!("k{rev}").into_bytes(),
                value: vec![],
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            },
        }
    }

    fn ev_at(key: &str, rev: u64) -> Event {
        let mut e = ev(rev);
        e.kv.key = key.as_bytes().to_vec();
        e
    }

    async fn next_batch(stream: &mut (impl Stream<Item = WatchItem> + Unpin)) -> Option<WatchItem> {
        use futures::StreamExt;
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a watch batch within 5 s")
    }

    fn keys(batch: &WatchBatch) -> Vec<String> {
        batch
            .events
            .iter()
            .map(|e| String::from_utf8(e.kv.key.clone()).unwrap())
            .collect()
    }

    /// Reads batches until one reports `revision`; returns their events'
    /// revisions and checks each batch's own revision.
    async fn revisions_through(
        stream: &mut (impl Stream<Item = WatchItem> + Unpin),
        revision: u64,
    ) -> Vec<u64> {
        let mut revs = Vec::new();
        loop {
            let batch = next_batch(stream).await.unwrap().unwrap();
            assert!(batch.events.len() <= MAX_BATCH_EVENTS);
            if let Some(last) = batch.events.last() {
                assert_eq!(batch.revision, last.revision());
            }
            revs.extend(batch.events.iter().map(|e| e.revision()));
            if batch.revision >= revision {
                return revs;
            }
        }
    }

    #[tokio::test]
    async fn a_transactions_events_reach_a_watcher_together() {
        let hub = WatchHub::new(0, 100, usize::MAX);
        let mut watch = Box::pin(hub.watch(KeyRange::prefix("k/"), 0).unwrap());
        // A namespace deletion: many deletes, one revision.
        hub.publish(
            vec![
                ev_at("k/a", 1),
                ev_at("other", 1),
                ev_at("k/b", 1),
                ev_at("k/c", 1),
            ],
            1,
        );
        hub.publish(vec![ev_at("k/d", 2)], 2);
        let batch = next_batch(&mut watch).await.unwrap().unwrap();
        assert_eq!(keys(&batch), ["k/a", "k/b", "k/c", "k/d"]);
        assert_eq!(batch.revision, 2);
    }

    #[tokio::test]
    async fn a_watcher_behind_the_live_channel_resumes_from_the_buffer() {
        let last = (LIVE_REVISIONS + 500) as u64;
        let hub = WatchHub::new(0, 2 * LIVE_REVISIONS, usize::MAX);
        let mut watch = Box::pin(hub.watch(KeyRange::prefix("k"), 0).unwrap());
        for rev in 1..=last {
            hub.publish(vec![ev(rev)], rev);
        }
        let revs = revisions_through(&mut watch, last).await;
        assert_eq!(revs, (1..=last).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_watcher_behind_the_buffer_too_must_list_again() {
        let hub = WatchHub::new(0, 10, usize::MAX);
        let mut watch = Box::pin(hub.watch(KeyRange::prefix("k"), 0).unwrap());
        for rev in 1..=(LIVE_REVISIONS + 10) as u64 {
            hub.publish(vec![ev(rev)], rev);
        }
        let err = next_batch(&mut watch).await.unwrap().unwrap_err();
        assert_eq!(err.requested, 1);
        assert!(next_batch(&mut watch).await.is_none());
    }

    #[tokio::test]
    async fn a_watch_from_a_revision_gets_the_backlog_in_batches_then_live_changes() {
        let hub = WatchHub::new(0, 10_000, usize::MAX);
        for rev in 1..=3_000 {
            hub.publish(vec![ev(rev)], rev);
        }
        let mut watch = Box::pin(hub.watch(KeyRange::prefix("k"), 1_001).unwrap());
        let revs = revisions_through(&mut watch, 3_000).await;
        assert_eq!(revs, (1_001..=3_000).collect::<Vec<_>>());
        hub.publish(vec![ev(3_001)], 3_001);
        assert_eq!(revisions_through(&mut watch, 3_001).await, [3_001]);
    }

    #[tokio::test]
    async fn a_controller_behind_the_watcher_skips_what_the_watcher_saw() {
        let hub = WatchHub::new(0, 100, usize::MAX);
        hub.publish(vec![ev(1)], 1);
        // The watcher saw up to revision 3 elsewhere.
        let mut watch = Box::pin(hub.watch(KeyRange::prefix("k"), 4).unwrap());
        for rev in 2..=4 {
            hub.publish(vec![ev(rev)], rev);
        }
        assert_eq!(revisions_through(&mut watch, 4).await, [4]);
    }

    #[test]
    fn resumes_from_buffered_revision_and_refuses_compacted_one() {
        let hub = WatchHub::new(0, 3, usize::MAX);
        for rev in 1..=5 {
            hub.publish(vec![ev(rev)], rev);
        }
        let sub = hub.subscribe(4).unwrap();
        let revs: Vec<u64> = sub.backlog.iter().map(|e| e.revision()).collect();
        assert_eq!(revs, vec![4, 5]);
        assert_eq!(
            hub.subscribe(2).err(),
            Some(Compacted {
                requested: 2,
                oldest: 3
            })
        );
        assert_eq!(hub.subscribe(3).unwrap().backlog.len(), 3);
    }

    #[test]
    fn live_events_follow_the_backlog_without_gaps() {
        let hub = WatchHub::new(0, 10, usize::MAX);
        hub.publish(vec![ev(1)], 1);
        let mut sub = hub.subscribe(1).unwrap();
        hub.publish(vec![ev(2)], 2);
        assert_eq!(sub.backlog.len(), 1);
        match sub.live.try_recv().unwrap() {
            HubItem::Revision(events) => assert_eq!(events[0].revision(), 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn large_values_bound_the_buffer_by_bytes() {
        let hub = WatchHub::new(0, 100, 25);
        for rev in 1..=5 {
            let mut e = ev(rev);
            e.kv.value = vec![0; 8];
            hub.publish(vec![e], rev);
        }
        // Each event is 10 bytes (2-byte key, 8-byte value): two fit.
        assert_eq!(hub.subscribe(4).unwrap().backlog.len(), 2);
        assert!(hub.subscribe(3).is_err());
    }

    #[test]
    fn reset_forgets_history() {
        let hub = WatchHub::new(0, 10, usize::MAX);
        hub.publish(vec![ev(1)], 1);
        hub.reset(50);
        assert!(hub.subscribe(1).is_err());
        assert!(hub.subscribe(51).unwrap().backlog.is_empty());
    }
}
