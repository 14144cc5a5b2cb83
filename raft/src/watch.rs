//! The watch hub: every change the state machine applies is published here
//! with its revision. A bounded buffer of recent events lets a watcher
//! resume from a revision it has already seen; a revision older than the
//! buffer is refused so the watcher lists again instead of missing changes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::types::Event;

/// Events kept for watchers that resume.
pub const DEFAULT_BUFFER_EVENTS: usize = 100_000;
/// Bytes of keys and values kept for watchers that resume: large values
/// must not let the buffer grow without bound.
pub const DEFAULT_BUFFER_BYTES: usize = 256 << 20;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "revision {requested} is no longer available: this controller keeps changes from revision {oldest} on; list again and watch from the list's revision"
)]
pub struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

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
    Event(Arc<Event>),
    /// The state was replaced by a snapshot; subscribers must list again.
    Reset {
        revision: u64,
    },
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
        let (live, _) = broadcast::channel(16 * 1024);
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

    pub fn publish(&self, events: Vec<Event>, revision: u64) {
        let mut buf = self.buffer.lock().expect("watch buffer lock");
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
            // No receivers is fine: nobody is watching.
            let _ = self.live.send(HubItem::Event(event));
        }
        buf.revision = revision;
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
}

fn event_bytes(e: &Event) -> usize {
    e.kv.key.len() + e.kv.value.len()
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
            HubItem::Event(e) => assert_eq!(e.revision(), 2),
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
