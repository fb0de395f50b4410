//! A connection's pending output: a queue of byte chunks written with `writev`.
//!
//! Message bodies arrive as [`Chunk::Shared`] slices that every subscriber of
//! a delivery points at, so fan-out copies nothing; per-connection framing
//! (an SSE `id:` line, a FastCGI record header) travels as a small inline
//! chunk. The queue owns no heap memory while empty, which is the common
//! state of a parked connection.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Capacity of an inline chunk: an `id: <u64>\n` line plus a FastCGI header.
const INLINE: usize = 46;

/// Most slices handed to one `writev`; Linux's IOV_MAX is 1024, and 64
/// covers a full socket buffer of typical messages.
const MAX_IOV: usize = 64;

/// Slices in the common small `writev`.
const FEW_IOV: usize = 4;

/// One piece of output.
#[derive(Debug, Clone)]
pub enum Chunk {
    /// Constant bytes (heartbeats, fixed framing).
    Static(&'static [u8]),
    /// A few per-connection bytes stored inline, no allocation.
    Inline { buf: [u8; INLINE], len: u8 },
    /// Bytes owned by this connection (response heads, JSON bodies, replies).
    Owned(Vec<u8>),
    /// Bytes shared with other connections (an encoded message body).
    Shared(Rc<[u8]>),
}

impl Chunk {
    /// Copies `bytes` inline when they fit, else into an owned buffer.
    pub fn copy(bytes: &[u8]) -> Chunk {
        if bytes.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..bytes.len()].copy_from_slice(bytes);
            Chunk::Inline {
                buf,
                len: bytes.len() as u8,
            }
        } else {
            Chunk::Owned(bytes.to_vec())
        }
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Static(b) => b,
            Chunk::Inline { buf, len } => &buf[..*len as usize],
            Chunk::Owned(v) => v,
            Chunk::Shared(r) => r,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True for a zero-length chunk.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Output waiting for the socket, with its total size for cap checks.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    len: usize,
}

impl OutQueue {
    /// Bytes still to write.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a chunk.
    pub fn push(&mut self, chunk: Chunk) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Queues a copy of `bytes`, appending to a trailing owned chunk when possible.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if let Some(Chunk::Owned(last)) = self.chunks.back_mut() {
            last.extend_from_slice(bytes);
            self.len += bytes.len();
        } else {
            self.push(Chunk::Owned(bytes.to_vec()));
        }
    }

    /// Writes as much as the socket takes. `Ok(true)` when drained, `Ok(false)`
    /// when the socket would block with output left.
    pub fn write_to(&mut self, sink: &mut impl Write) -> io::Result<bool> {
        while !self.chunks.is_empty() {
            // Most flushes carry one message (two or three chunks): a small
            // slice array avoids initialising the full one every time.
            let result = if self.chunks.len() <= FEW_IOV {
                self.write_some::<FEW_IOV>(sink)
            } else {
                self.write_some::<MAX_IOV>(sink)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// One `writev` of up to `N` chunks.
    fn write_some<const N: usize>(&self, sink: &mut impl Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().take(N).enumerate() {
            let bytes = chunk.bytes();
            slices[i] = IoSlice::new(if i == 0 { &bytes[self.offset..] } else { bytes });
            n = i + 1;
        }
        sink.write_vectored(&slices[..n])
    }

    /// The bytes still to write, in one buffer (a handover passes them on
    /// verbatim, whatever the chunk they are part of).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for (i, chunk) in self.chunks.iter().enumerate() {
            let bytes = chunk.bytes();
            out.extend_from_slice(if i == 0 { &bytes[self.offset..] } else { bytes });
        }
        out
    }

    /// Forgets all pending output and releases its memory.
    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }

    fn consume(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if written < left {
                self.offset += written;
                return;
            }
            written -= left;
            self.offset = 0;
            self.chunks.pop_front();
        }
        if self.chunks.is_empty() {
            // A parked connection should hold no buffer memory between messages.
            self.chunks = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `budget` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for b in bufs {
                let take = (self.per_call - n).min(b.len());
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let shared: Rc<[u8]> = Rc::from(&b"shared-body"[..]);
        let mut q = OutQueue::default();
        q.push(Chunk::copy(b"id: 1\n"));
        q.push(Chunk::Shared(shared.clone()));
        q.push(Chunk::Static(b"\n"));
        q.push_bytes(b"tail");
        q.push_bytes(b"+more");
        let total = q.len();
        let mut w = Trickle {
            out: vec![],
            per_call: 3,
            calls_left: 2,
        };
        assert!(!q.write_to(&mut w).unwrap());
        assert_eq!(q.len(), total - 6);
        w.calls_left = usize::MAX;
        assert_eq!(q.to_vec(), b"shared-body\ntail+more");
        assert!(q.write_to(&mut w).unwrap());
        assert_eq!(w.out, b"id: 1\nshared-body\ntail+more");
        assert!(q.is_empty());
    }

    #[test]
    fn inline_and_owned_copies() {
        assert!(matches!(Chunk::copy(&[1; INLINE]), Chunk::Inline { .. }));
        assert!(matches!(Chunk::copy(&[1; INLINE + 1]), Chunk::Owned(_)));
        let mut q = OutQueue::default();
        q.push(Chunk::Static(b""));
        assert!(q.is_empty());
    }
}
