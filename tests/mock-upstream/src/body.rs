//! The response body type: a single buffer, nothing, or a paced sequence of
//! pre-rendered events (SSE) with optional compression, stalls and aborts.

use std::future::Future;
use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::Shared;
use crate::scenario::Encoding;

/// Body of every response the mock sends.
pub(crate) struct MockBody {
    inner: Inner,
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Events(Box<EventStream>),
}

/// How to pace and end an event body.
#[derive(Default)]
pub(crate) struct StreamPlan {
    /// Pause between events.
    pub delay: Option<Duration>,
    /// After this many events, never produce anything again.
    pub stall_after: Option<usize>,
    /// After this many events, fail the body (the connection is cut).
    pub drop_after: Option<usize>,
    /// Compress incrementally, one flush per event.
    pub encoding: Option<Encoding>,
    /// Count this body in `completed_streams` / `cancelled_streams`.
    pub stats: Option<Arc<Shared>>,
}

impl MockBody {
    pub(crate) fn empty() -> MockBody {
        MockBody {
            inner: Inner::Empty,
        }
    }

    pub(crate) fn full(data: impl Into<Bytes>) -> MockBody {
        MockBody {
            inner: Inner::Full(Some(data.into())),
        }
    }

    /// A body that yields `events` one frame each (each flushed on its own).
    pub(crate) fn events(events: Vec<Bytes>, plan: StreamPlan) -> MockBody {
        MockBody {
            inner: Inner::Events(Box::new(EventStream {
                events: events.into_iter(),
                sent: 0,
                delay: plan.delay,
                sleep: None,
                sleeping: false,
                stall_after: plan.stall_after,
                drop_after: plan.drop_after,
                compressor: plan.encoding.map(Compressor::new),
                // Flush the response head before the first event.
                yield_next: true,
                ended: false,
                guard: plan.stats.map(|shared| StatsGuard {
                    shared,
                    settled: false,
                }),
            })),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Events(stream) => stream.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(data) => data.is_none(),
            Inner::Events(stream) => stream.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Events(_) => SizeHint::default(),
        }
    }
}

struct EventStream {
    events: std::vec::IntoIter<Bytes>,
    sent: usize,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    sleeping: bool,
    stall_after: Option<usize>,
    drop_after: Option<usize>,
    compressor: Option<Compressor>,
    /// Return `Pending` once (with an immediate wake-up) before going on so
    /// hyper flushes the head and every event in its own write.
    yield_next: bool,
    ended: bool,
    guard: Option<StatsGuard>,
}

impl EventStream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if self.yield_next {
                // Whatever was produced last is flushed by hyper before it
                // polls again, so stalls, aborts and delays act on the wire.
                self.yield_next = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.stall_after.is_some_and(|n| self.sent >= n) {
                // Hang forever without registering a wake-up. hyper keeps
                // watching the socket, so a client that goes away still
                // gets this body dropped (and counted as cancelled).
                return Poll::Pending;
            }
            if self.drop_after.is_some_and(|n| self.sent >= n) {
                self.ended = true;
                if let Some(guard) = &mut self.guard {
                    guard.settled = true;
                }
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "x-mock-scenario drop-after: aborting the response body",
                ))));
            }
            if self.events.len() == 0 {
                self.ended = true;
                if let Some(guard) = &mut self.guard {
                    guard.complete();
                }
                return Poll::Ready(None);
            }
            if self.sleeping {
                if let Some(sleep) = &mut self.sleep {
                    ready!(sleep.as_mut().poll(cx));
                }
                self.sleeping = false;
            }
            let Some(event) = self.events.next() else {
                continue;
            };
            self.sent += 1;
            let last = self.events.len() == 0;
            let data = match &mut self.compressor {
                Some(c) => match c.chunk(&event, last) {
                    Ok(data) => data,
                    Err(e) => {
                        self.ended = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                },
                None => event,
            };
            if last {
                if let Some(guard) = &mut self.guard {
                    guard.complete();
                }
                self.yield_next = true;
            } else if let Some(delay) = self.delay {
                let deadline = Instant::now() + delay;
                match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                self.sleeping = true;
            } else {
                self.yield_next = true;
            }
            if data.is_empty() {
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }
}

/// Counts a stream as completed when its last event goes out, or as
/// cancelled when it is dropped before that (the client went away).
struct StatsGuard {
    shared: Arc<Shared>,
    settled: bool,
}

impl StatsGuard {
    fn complete(&mut self) {
        if !self.settled {
            self.settled = true;
            self.shared.completed_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Incremental compressor: every chunk is flushed so the client can decode
/// each event as soon as it arrives.
enum Compressor {
    Gzip(GzEncoder<Vec<u8>>),
    Br(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
}

impl Compressor {
    fn new(encoding: Encoding) -> Compressor {
        match encoding {
            Encoding::Gzip => Compressor::Gzip(GzEncoder::new(Vec::new(), Compression::fast())),
            // quality 4, 256 KiB window: cheap per stream.
            Encoding::Br => Compressor::Br(Some(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                4,
                18,
            )))),
        }
    }

    /// Compresses `data`; with `last` the stream is finished (trailer
    /// included), otherwise it is flushed to a byte boundary.
    fn chunk(&mut self, data: &[u8], last: bool) -> io::Result<Bytes> {
        match self {
            Compressor::Gzip(enc) => {
                enc.write_all(data)?;
                if last {
                    enc.try_finish()?;
                } else {
                    enc.flush()?;
                }
                Ok(Bytes::from(std::mem::take(enc.get_mut())))
            }
            Compressor::Br(slot) => {
                let Some(enc) = slot.as_mut() else {
                    return Ok(Bytes::new());
                };
                enc.write_all(data)?;
                if last {
                    match slot.take() {
                        Some(enc) => Ok(Bytes::from(enc.into_inner())),
                        None => Ok(Bytes::new()),
                    }
                } else {
                    enc.flush()?;
                    Ok(Bytes::from(std::mem::take(enc.get_mut())))
                }
            }
        }
    }
}

/// Compresses a whole body at once.
pub(crate) fn compress(encoding: Encoding, data: &[u8]) -> io::Result<Bytes> {
    Compressor::new(encoding).chunk(data, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_chunks_decode_incrementally() {
        let mut c = Compressor::new(Encoding::Gzip);
        let a = c.chunk(b"data: one\n\n", false).unwrap();
        let b = c.chunk(b"data: two\n\n", true).unwrap();
        let mut all = a.to_vec();
        all.extend_from_slice(&b);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&all[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "data: one\n\ndata: two\n\n");
        // The first chunk alone already decodes to the first event.
        let mut dec = flate2::write::GzDecoder::new(Vec::new());
        dec.write_all(&a).unwrap();
        dec.flush().unwrap();
        assert_eq!(dec.get_ref().as_slice(), b"data: one\n\n");
    }

    #[test]
    fn brotli_round_trip() {
        let mut c = Compressor::new(Encoding::Br);
        let mut all = c.chunk(b"hello ", false).unwrap().to_vec();
        all.extend_from_slice(&c.chunk(b"world", true).unwrap());
        let mut out = String::new();
        brotli::Decompressor::new(&all[..], 4096)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
        let whole = compress(Encoding::Br, b"abc").unwrap();
        let mut out = Vec::new();
        brotli::Decompressor::new(&whole[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"abc");
    }
}
