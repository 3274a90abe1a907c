//! One captured stream, sans-IO: what to forward now, what to hold for the end (the cap's
//! tail), and the job's last lines. The drain task feeds it the bytes it read; nothing here
//! reads, writes or keeps time.
//!
//! # Invariants
//! - Memory is O(cap + [`TAIL_BYTES`]): the head is forwarded as it arrives and never kept,
//!   the held tail is a ring of at most `cap - cap / 2` bytes, the job's tail a ring of
//!   [`TAIL_BYTES`].
//! - Forwarded output is exactly: the first `cap / 2` bytes, then (if anything was dropped)
//!   the marker line, then the last `cap - cap / 2` bytes; without a cap, every byte in order.

use std::collections::VecDeque;

use super::{StreamTail, TAIL_BYTES, TAIL_LINES};

/// A byte ring keeping the last `max` bytes pushed into it.
#[derive(Debug)]
struct Ring {
    bytes: VecDeque<u8>,
    max: usize,
}

impl Ring {
    fn new(max: usize) -> Ring {
        Ring {
            bytes: VecDeque::new(),
            max,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if data.len() >= self.max {
            self.bytes.clear();
            self.bytes.extend(&data[data.len() - self.max..]);
            return;
        }
        let over = (self.bytes.len() + data.len()).saturating_sub(self.max);
        self.bytes.drain(..over);
        self.bytes.extend(data);
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
    }

    fn to_vec(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }
}

/// A captured stream's state.
#[derive(Debug)]
pub(crate) struct Stream {
    name: &'static str,
    /// With a cap: how many bytes of the head are forwarded as they come.
    head: Option<u64>,
    /// With a cap: the last bytes, forwarded at the end.
    held: Ring,
    /// Every byte read so far.
    total: u64,
    /// The last byte forwarded (the marker lines start on a line of their own).
    last_out: Option<u8>,
    /// The current job's last bytes, and how many it wrote.
    last: Ring,
    job_bytes: u64,
    /// The stream was closed (EOF, or cut).
    ended: bool,
    /// Closed by warden before EOF.
    cut: bool,
    /// Bytes the cap dropped, fixed when the stream was closed (the held tail is gone then).
    dropped: Option<u64>,
}

impl Stream {
    /// A stream called `name` (`stdout`, `stderr`) with an optional cap on forwarded bytes.
    pub(crate) fn new(name: &'static str, cap: Option<u64>) -> Stream {
        let (head, held) = match cap {
            Some(cap) => {
                let head = cap / 2;
                let tail = usize::try_from(cap - head).unwrap_or(usize::MAX);
                (Some(head), Ring::new(tail))
            }
            None => (None, Ring::new(0)),
        };
        Stream {
            name,
            head,
            held,
            total: 0,
            last_out: None,
            last: Ring::new(TAIL_BYTES),
            job_bytes: 0,
            ended: false,
            cut: false,
            dropped: None,
        }
    }

    /// Takes a chunk read from the pipe. Returns how many of its first bytes are to be
    /// forwarded now; the rest (under a cap, past the head) is held for [`finish`](Self::finish).
    pub(crate) fn push(&mut self, chunk: &[u8]) -> usize {
        self.last.push(chunk);
        self.job_bytes = self.job_bytes.saturating_add(chunk.len() as u64);
        let forward = match self.head {
            None => chunk.len(),
            Some(head) => {
                let room = head.saturating_sub(self.total);
                let now = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
                self.held.push(&chunk[now..]);
                now
            }
        };
        self.total = self.total.saturating_add(chunk.len() as u64);
        if forward > 0 {
            self.last_out = Some(chunk[forward - 1]);
        }
        forward
    }

    /// A new job starts: its tail begins empty.
    pub(crate) fn start_job(&mut self) {
        self.last.clear();
        self.job_bytes = 0;
    }

    /// Bytes the cap has dropped so far (past the head, and no longer in the held tail).
    fn truncated(&self) -> u64 {
        if let Some(dropped) = self.dropped {
            return dropped;
        }
        match self.head {
            Some(head) => self
                .total
                .saturating_sub(head)
                .saturating_sub(self.held.len() as u64),
            None => 0,
        }
    }

    /// Closes the stream (`cut`: before EOF). Returns the rest to forward: the marker line if
    /// the cap dropped bytes, the held tail, and a line saying so if the stream was cut.
    /// Empty once closed.
    pub(crate) fn finish(&mut self, cut: bool) -> Vec<u8> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        self.cut = cut;
        let mut out = Vec::new();
        let truncated = self.truncated();
        self.dropped = Some(truncated);
        if truncated > 0 {
            self.line(
                &mut out,
                &format!("[warden: {truncated} bytes of {} truncated]", self.name),
            );
        }
        let held = self.held.to_vec();
        if let Some(&b) = held.last() {
            self.last_out = Some(b);
        }
        out.extend_from_slice(&held);
        self.held.clear();
        if cut {
            self.line(
                &mut out,
                &format!(
                    "[warden: {} cut: still held open after the tree ended]",
                    self.name
                ),
            );
        }
        out
    }

    /// Appends `text` as a line of its own (after a newline if the output so far does not
    /// end with one).
    fn line(&mut self, out: &mut Vec<u8>, text: &str) {
        let last = out.last().copied().or(self.last_out);
        if last.is_some_and(|b| b != b'\n') {
            out.push(b'\n');
        }
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
        self.last_out = Some(b'\n');
    }

    /// The current job's tail: its last [`TAIL_LINES`] lines within its last [`TAIL_BYTES`]
    /// bytes, valid UTF-8 (invalid sequences replaced with U+FFFD). A line cut by the byte
    /// window is kept as its end, from the first whole character.
    pub(crate) fn tail(&self) -> StreamTail {
        let mut bytes = self.last.to_vec();
        if self.job_bytes > bytes.len() as u64 {
            // The window starts inside the stream: skip a character cut at its start.
            let cut = bytes
                .iter()
                .take(3)
                .take_while(|&&b| b & 0xC0 == 0x80)
                .count();
            bytes.drain(..cut);
        }
        let text = String::from_utf8_lossy(&bytes);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let mut lines: Vec<String> = if text.is_empty() && self.job_bytes == 0 {
            Vec::new()
        } else {
            text.split('\n').map(str::to_owned).collect()
        };
        let extra = lines.len().saturating_sub(TAIL_LINES);
        lines.drain(..extra);
        StreamTail {
            lines,
            bytes: self.job_bytes,
            truncated: self.truncated(),
            cut: self.cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks`, collecting what is forwarded, then finishes.
    fn run(stream: &mut Stream, chunks: &[&[u8]], cut: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            let n = stream.push(chunk);
            out.extend_from_slice(&chunk[..n]);
        }
        out.extend(stream.finish(cut));
        out
    }

    #[test]
    fn without_a_cap_everything_is_forwarded_in_order() {
        let mut s = Stream::new("stdout", None);
        assert_eq!(run(&mut s, &[b"ab", b"c\n", b"d"], false), b"abc\nd");
        let tail = s.tail();
        assert_eq!(tail.lines, ["abc", "d"]);
        assert_eq!((tail.bytes, tail.truncated, tail.cut), (5, 0, false));
    }

    #[test]
    fn a_cap_keeps_head_and_tail_with_the_marker_between() {
        let mut s = Stream::new("stdout", Some(8));
        // 4 of head, 4 of tail; 26 bytes in: 18 dropped.
        let out = run(&mut s, &[b"abcdefghij", b"klmnopqrstuvwxyz"], false);
        assert_eq!(out, b"abcd\n[warden: 18 bytes of stdout truncated]\nwxyz");
        assert_eq!(s.tail().truncated, 18);
        assert_eq!(s.tail().bytes, 26);
        // A head ending its line needs no newline before the marker.
        let mut s = Stream::new("stderr", Some(6));
        let out = run(&mut s, &[b"ab\n", b"123456789", b"\nxy\n"], false);
        assert_eq!(out, b"ab\n[warden: 10 bytes of stderr truncated]\nxy\n");
    }

    #[test]
    fn under_the_cap_nothing_is_marked() {
        let mut s = Stream::new("stdout", Some(8));
        assert_eq!(run(&mut s, &[b"abcdef", b"gh"], false), b"abcdefgh");
        let mut s = Stream::new("stdout", Some(8));
        assert_eq!(run(&mut s, &[b"abc"], false), b"abc");
        // One byte over.
        let mut s = Stream::new("stdout", Some(8));
        assert_eq!(
            run(&mut s, &[b"abcdefghi"], false),
            b"abcd\n[warden: 1 bytes of stdout truncated]\nfghi"
        );
    }

    #[test]
    fn a_cut_stream_says_so_on_a_line_of_its_own() {
        let mut s = Stream::new("stdout", None);
        assert_eq!(
            run(&mut s, &[b"partial"], true),
            b"partial\n[warden: stdout cut: still held open after the tree ended]\n"
        );
        assert!(s.tail().cut);
        assert!(s.finish(false).is_empty(), "finished once");
    }

    #[test]
    fn the_tail_is_the_last_lines_of_the_last_bytes_lossy() {
        let mut s = Stream::new("stdout", None);
        let mut text = String::new();
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        s.push(text.as_bytes());
        s.push(b"bad \xff\xfe end");
        let tail = s.tail();
        assert_eq!(tail.lines.len(), TAIL_LINES);
        assert_eq!(tail.lines[0], "line 11");
        assert_eq!(tail.lines[TAIL_LINES - 1], "bad \u{fffd}\u{fffd} end");
        // A window starting inside a character skips it.
        let mut s = Stream::new("stdout", None);
        s.push(b"x");
        let mut long = vec![b'a'; TAIL_BYTES - 1];
        long.splice(0..0, "é".bytes());
        s.push(&long);
        let tail = s.tail();
        assert_eq!(tail.lines.len(), 1);
        assert!(tail.lines[0].starts_with("a"), "{:?}", &tail.lines[0][..4]);
        assert!(!tail.lines[0].contains('\u{fffd}'));
    }

    #[test]
    fn a_job_tail_starts_with_the_job() {
        let mut s = Stream::new("stdout", None);
        s.push(b"before\n");
        s.start_job();
        assert_eq!(s.tail().lines, Vec::<String>::new());
        assert_eq!(s.tail().bytes, 0);
        s.push(b"during\n");
        assert_eq!(s.tail().lines, ["during"]);
        assert_eq!(s.tail().bytes, 7);
    }

    #[test]
    fn memory_is_bounded_by_the_cap() {
        let mut s = Stream::new("stdout", Some(1000));
        let chunk = [b'x'; 4096];
        for _ in 0..1000 {
            s.push(&chunk);
        }
        assert!(s.held.bytes.capacity() < 4096 + 1000);
        assert!(s.last.bytes.capacity() < 2 * TAIL_BYTES + 4096);
        assert_eq!(s.tail().truncated, 1000 * 4096 - 1000);
    }
}
