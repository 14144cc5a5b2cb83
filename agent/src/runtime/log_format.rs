//! The process runtime's container log format, the CRI's (what the kubelet
//! reads from containerd): one line per line the container wrote,
//! `TIME STREAM TAG CONTENT`, with TIME in RFC 3339 with nanoseconds,
//! STREAM `stdout` or `stderr`, and TAG `F` for a full line or `P` for a
//! part of a longer one. The shim writes it; `berth logs` reads it back,
//! with or without the times, from a time on, or only the last lines.

use std::collections::VecDeque;
use std::time::SystemTime;

/// Longer lines are written as parts of this size (as the CRI's 16 KiB).
pub const MAX_LINE: usize = 16 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

/// What a read of the log asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming until the container has exited.
    pub follow: bool,
    /// Only the last this many lines (before following).
    pub tail: Option<usize>,
    /// Only lines written at or after this time.
    pub since: Option<SystemTime>,
    /// Each line begins with the time it was written, as `kubectl logs
    /// --timestamps` shows it.
    pub timestamps: bool,
}

/// One record: `content` without its newline; `partial` when the line
/// goes on in the next record.
pub fn record(at: SystemTime, stream: Stream, content: &[u8], partial: bool) -> Vec<u8> {
    let time = humantime::format_rfc3339_nanos(at).to_string();
    let tag = if partial { "P" } else { "F" };
    let mut out = Vec::with_capacity(time.len() + content.len() + 12);
    out.extend_from_slice(format!("{time} {} {tag} ", stream.name()).as_bytes());
    out.extend_from_slice(content);
    out.push(b'\n');
    out
}

/// A record read back. A line in no known form (written by an older
/// agent, say) is content with no time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry<'a> {
    time: Option<(&'a str, SystemTime)>,
    content: &'a [u8],
    partial: bool,
}

fn parse(line: &[u8]) -> Entry<'_> {
    let plain = Entry {
        time: None,
        content: line,
        partial: false,
    };
    let mut fields = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(stream), Some(tag), Some(content)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return plain;
    };
    let Ok(time) = std::str::from_utf8(time) else {
        return plain;
    };
    let Ok(at) = humantime::parse_rfc3339(time) else {
        return plain;
    };
    if !matches!(stream, b"stdout" | b"stderr") || !matches!(tag, b"F" | b"P") {
        return plain;
    }
    Entry {
        time: Some((time, at)),
        content,
        partial: tag == b"P",
    }
}

/// Turns log records into the container's output as `options` asks.
#[derive(Debug)]
pub struct Reader {
    since: Option<SystemTime>,
    timestamps: bool,
    /// Until the backlog is read: the last lines kept for `tail`.
    held: Option<(usize, VecDeque<Vec<u8>>)>,
    /// Bytes after the last newline, waiting for the rest of their record.
    pending: Vec<u8>,
    /// The previous record was partial: this one continues its line.
    continuing: bool,
}

impl Reader {
    pub fn new(options: &LogOptions) -> Self {
        Self {
            since: options.since,
            timestamps: options.timestamps,
            held: options.tail.map(|n| (n, VecDeque::new())),
            pending: Vec::new(),
            continuing: false,
        }
    }

    /// Takes the next bytes of the file; returns what to send now.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.pending.split_off(end + 1);
        let whole = std::mem::replace(&mut self.pending, rest);
        let mut out = Vec::new();
        for line in whole[..whole.len() - 1].split(|b| *b == b'\n') {
            let continues = self.continuing;
            let shown = self.render(parse(line));
            match &mut self.held {
                Some((n, kept)) => {
                    match kept.back_mut() {
                        // The rest of a long line is the same line.
                        Some(last) if continues => last.extend(shown),
                        _ if shown.is_empty() => {}
                        _ => kept.push_back(shown),
                    }
                    while kept.len() > *n {
                        kept.pop_front();
                    }
                }
                None => out.extend_from_slice(&shown),
            }
        }
        out
    }

    /// The backlog is read: what `tail` kept, after which lines flow.
    pub fn caught_up(&mut self) -> Vec<u8> {
        self.held
            .take()
            .map(|(_, kept)| kept.into_iter().flatten().collect())
            .unwrap_or_default()
    }

    fn render(&mut self, entry: Entry<'_>) -> Vec<u8> {
        let continuing = std::mem::replace(&mut self.continuing, entry.partial);
        let before_since = match (self.since, entry.time) {
            (Some(since), Some((_, at))) => at < since,
            _ => false,
        };
        if before_since {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(entry.content.len() + 32);
        if let (true, false, Some((time, _))) = (self.timestamps, continuing, entry.time) {
            out.extend_from_slice(time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(entry.content);
        if !entry.partial {
            out.push(b'\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn log() -> Vec<u8> {
        [
            record(at(0), Stream::Stdout, b"one", false),
            record(at(1), Stream::Stderr, b"two", false),
            record(at(2), Stream::Stdout, b"thr", true),
            record(at(2), Stream::Stdout, b"ee", false),
            record(at(3), Stream::Stdout, b"four", false),
        ]
        .concat()
    }

    fn read(options: LogOptions, chunk: usize) -> String {
        let mut r = Reader::new(&options);
        let mut out: Vec<u8> = log().chunks(chunk).flat_map(|c| r.feed(c)).collect();
        out.extend(r.caught_up());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn records_read_back_as_the_output_in_any_chunking() {
        for chunk in [1, 7, 1000] {
            assert_eq!(
                read(LogOptions::default(), chunk),
                "one\ntwo\nthree\nfour\n"
            );
        }
    }

    #[test]
    fn tail_since_and_timestamps_pick_and_mark_lines() {
        let tail = LogOptions {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(read(tail, 5), "three\nfour\n");
        let since = LogOptions {
            since: Some(at(1)),
            ..Default::default()
        };
        assert_eq!(read(since, 5), "two\nthree\nfour\n");
        let stamped = LogOptions {
            timestamps: true,
            tail: Some(1),
            ..Default::default()
        };
        assert_eq!(read(stamped, 5), "2023-11-14T22:13:23.000000000Z four\n");
        let none = LogOptions {
            tail: Some(0),
            ..Default::default()
        };
        assert_eq!(read(none, 5), "");
    }

    #[test]
    fn lines_in_no_known_form_pass_through() {
        let mut r = Reader::new(&LogOptions::default());
        assert_eq!(r.feed(b"raw output\nmore"), b"raw output\n");
        assert_eq!(r.feed(b"\n"), b"more\n");
    }
}
