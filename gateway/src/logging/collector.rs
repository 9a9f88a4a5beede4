//! The collector: a background thread that receives finished calls from the
//! gateway and, in eBPF mode, drains the kernel's ring buffer itself; it
//! joins the two halves of each call and hands them in batches to the store
//! writer (`writer.rs`), off the request path and off the disk's. Nothing
//! here can block a request: the channel is bounded and a full channel
//! drops the record and counts it.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use apx_capture_common::user::IdHasher;

use super::record::{CallEntry, GatewayHalf};
use super::writer::StoreWriter;
use crate::store::logs::LogStore;

/// Records waiting in the channel at most; beyond it they are dropped and
/// counted. About 1.5 s of calls at 40 000 a second: the collector drains
/// every `DRAIN_PERIOD`, so only a collector starved of CPU comes near it.
const CHANNEL_CAPACITY: usize = 64 * 1024;
/// A batch is written when it has this many records…
const BATCH_RECORDS: usize = 512;
/// …or at the end of a drain once it is this old.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// The channel and the kernel feed are drained at least this often, so the
/// calls waiting in them stay few (and in cache) between batch writes.
const DRAIN_PERIOD: Duration = Duration::from_millis(5);
/// How long one half of a call waits for the other before it is written alone.
pub const JOIN_WINDOW: Duration = Duration::from_secs(2);

/// Identifies a request across the kernel and the gateway: the client's
/// address and port, and the request's number on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JoinKey {
    pub peer_ip: IpAddr,
    pub peer_port: u16,
    pub seq: u32,
}

/// Where kernel-captured halves come from (the eBPF ring buffer). The
/// collector polls it on its own thread, so a kernel record goes from the
/// ring buffer to the join without another thread or channel.
pub trait KernelFeed: Send {
    /// Signalled when the kernel has many records pending (the programs
    /// wake waiters only when a threshold is crossed; the collector also
    /// drains on its timer). Only the wake-up counts: `poll` on a BPF ring
    /// buffer says "readable" while any record at all is pending, so the
    /// collector waits on it edge-triggered (`RingWaiter`).
    fn wait_fd(&self) -> std::os::fd::RawFd;
    /// Hands over every record pending now: the kernel half of a call and
    /// its join key (`None` when it cannot be joined).
    fn drain(&mut self, deliver: &mut dyn FnMut(CallEntry, Option<JoinKey>));
    /// Kernel-side loss counters, absolute values, for the store.
    fn counters(&mut self) -> Vec<(String, u64)>;
}

// The large variant is the one sent per call in eBPF mode, by value on
// purpose (see `GatewayHalf`). User-space calls (a box) then take slots of
// the same size: the channel holds a few KB more per 5 ms drain, measured
// as no change in peak RSS.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A finished call captured in user space, complete.
    Call(Box<CallEntry>),
    /// What the gateway adds to a call the kernel captured, to be joined
    /// with its kernel record.
    Half(JoinKey, GatewayHalf),
    /// Write everything pending, then answer.
    Flush(SyncSender<()>),
    Stop,
}

/// Counters the collector keeps and stores.
#[derive(Default)]
pub struct CollectorCounters {
    /// Records dropped because the channel was full.
    pub channel_drops: AtomicU64,
    /// Calls sent and not yet received by the collector: the channel's
    /// bound. The channel itself is unbounded, so it holds memory for the
    /// calls in it, not for `CHANNEL_CAPACITY` of them (a preallocated
    /// bounded channel of 64 Ki slots was 2.6 MB, resident from the start).
    queued: AtomicUsize,
    /// Records that failed to be written.
    pub write_failures: AtomicU64,
    /// Records dropped because the store writer's queue was full (the disk
    /// fell behind).
    pub store_backlog_drops: AtomicU64,
    pub written: AtomicU64,
}

/// The sending side, cloned into every ticket: one reference count for
/// the channel's sender and the counters together (the workers share it,
/// so each count is a cache line moving between them).
#[derive(Clone)]
pub struct LogSink(Arc<SinkShared>);

struct SinkShared {
    sender: Sender<Event>,
    counters: Arc<CollectorCounters>,
}

impl LogSink {
    /// Never blocks: a full channel drops the call and counts it.
    pub fn send_call(&self, record: Box<CallEntry>) {
        self.send(Event::Call(record));
    }

    /// Like [`LogSink::send_call`], for a gateway half.
    pub fn send_half(&self, join: JoinKey, half: GatewayHalf) {
        self.send(Event::Half(join, half));
    }

    fn send(&self, event: Event) {
        let counters = &self.0.counters;
        if counters.queued.fetch_add(1, Ordering::Relaxed) >= CHANNEL_CAPACITY {
            counters.queued.fetch_sub(1, Ordering::Relaxed);
            counters.channel_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // An error means the collector is gone (shutdown): nothing to count.
        let _ = self.0.sender.send(event);
    }

    /// Asks the collector to write what it has and end.
    pub fn stop(&self) {
        let _ = self.0.sender.send(Event::Stop);
    }

    /// Blocks until the collector wrote everything sent before.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        if self.0.sender.send(Event::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }

    pub fn counters(&self) -> &CollectorCounters {
        &self.0.counters
    }
}

pub struct CollectorConfig {
    pub retention: Duration,
    pub max_bytes: u64,
}

/// Starts the collector thread on an open store, with the kernel feed when
/// capture is by eBPF.
pub fn start(
    store: LogStore,
    config: CollectorConfig,
    kernel: Option<Box<dyn KernelFeed>>,
) -> std::io::Result<(LogSink, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = mpsc::channel();
    let counters = Arc::new(CollectorCounters::default());
    let sink = LogSink(Arc::new(SinkShared {
        sender,
        counters: counters.clone(),
    }));
    let writer = StoreWriter::start(store, config, counters.clone())?;
    let handle = std::thread::Builder::new()
        .name("apx-log-collector".into())
        .spawn(move || Collector::new(writer, kernel, counters).run(receiver))?;
    Ok((sink, handle))
}

type JoinMap<V> = HashMap<JoinKey, V, BuildHasherDefault<IdHasher>>;

struct Collector {
    writer: StoreWriter,
    counters: Arc<CollectorCounters>,
    kernel: Option<Box<dyn KernelFeed>>,
    batch: Vec<CallEntry>,
    /// The gateway halves received this round, and where each is by key.
    /// Most find their kernel record later in the same round and are read
    /// where they are: moved into the join map and out again, a half (≈
    /// 250 bytes) was copied twice more.
    round_halves: Vec<GatewayHalf>,
    round_index: JoinMap<usize>,
    /// Halves from earlier rounds still waiting for their kernel record.
    waiting_gateway: JoinMap<(GatewayHalf, Instant)>,
    waiting_kernel: JoinMap<(CallEntry, Instant)>,
    kernel_counters: Vec<(String, u64)>,
    /// The kernel counters as last handed to the writer.
    sent_counters: Vec<(String, u64)>,
    /// When this round of draining began: the arrival time of the halves
    /// that wait for their partner (the join window is seconds; a clock
    /// read per half showed in the profile).
    round_start: Instant,
}

impl Collector {
    fn new(
        writer: StoreWriter,
        kernel: Option<Box<dyn KernelFeed>>,
        counters: Arc<CollectorCounters>,
    ) -> Collector {
        Collector {
            writer,
            counters,
            kernel,
            batch: Vec::with_capacity(BATCH_RECORDS),
            round_halves: Vec::new(),
            round_index: JoinMap::default(),
            waiting_gateway: JoinMap::default(),
            waiting_kernel: JoinMap::default(),
            kernel_counters: Vec::new(),
            sent_counters: Vec::new(),
            round_start: Instant::now(),
        }
    }

    /// Wakes every `DRAIN_PERIOD` (or when the kernel says a lot is
    /// pending) and drains the kernel feed and the channel; writes a batch
    /// when it is full or `BATCH_DELAY` old, so a wake-up does not cost a
    /// transaction. Draining every 50 ms left up to 50 ms of calls (≈ 1 MB
    /// at 40 000 a second) in the channel, out of cache by the time they
    /// were read and their memory reused: every 5 ms, CPU per request with
    /// user-space capture went 26.39 → 26.10 µs at 16 connections and
    /// 26.70 → 26.39 µs at 64 (medians of 5 interleaved rounds; eBPF
    /// capture 28.74 → 28.19 and 28.91 → 28.40 µs).
    ///
    /// Sleeping instead of blocking on the channel matters: a receiver
    /// blocked in `recv` is woken (a futex wake and a context switch) by
    /// every request's record.
    fn run(mut self, receiver: Receiver<Event>) {
        let waiter = match &self.kernel {
            Some(kernel) => match RingWaiter::new(kernel.wait_fd()) {
                Ok(waiter) => Some(waiter),
                Err(err) => {
                    tracing::warn!(
                        "cannot wait for kernel wake-ups ({err}); draining the ring buffer every {} ms",
                        DRAIN_PERIOD.as_millis()
                    );
                    None
                }
            },
            None => None,
        };
        let mut last_write = Instant::now();
        loop {
            let timeout = DRAIN_PERIOD.min(BATCH_DELAY.saturating_sub(last_write.elapsed()));
            match &waiter {
                Some(waiter) => waiter.wait(timeout),
                None => std::thread::sleep(timeout),
            }
            self.round_start = Instant::now();
            // The gateway's halves first: they are smaller than the
            // kernel's, which then mostly find theirs; the other way round
            // each kernel half (a whole entry) was moved into the map and
            // out again.
            let mut received = 0;
            loop {
                match receiver.try_recv() {
                    Ok(Event::Call(record)) => {
                        received += 1;
                        self.push(*record);
                    }
                    Ok(Event::Half(key, half)) => {
                        received += 1;
                        self.gateway_half(key, half);
                    }
                    Ok(Event::Flush(ack)) => {
                        self.finish_pending();
                        self.writer.flush(ack);
                    }
                    Ok(Event::Stop) | Err(TryRecvError::Disconnected) => {
                        self.finish_pending();
                        self.writer.stop();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
                if received == 64 {
                    self.counters.queued.fetch_sub(received, Ordering::Relaxed);
                    received = 0;
                }
                if self.batch.len() >= BATCH_RECORDS {
                    self.write();
                }
            }
            self.counters.queued.fetch_sub(received, Ordering::Relaxed);
            self.drain_kernel();
            self.settle_round();
            if last_write.elapsed() >= BATCH_DELAY {
                last_write = Instant::now();
                self.expire(false);
                self.refresh_kernel_counters();
                self.write();
            }
        }
    }

    /// Everything received so far goes to the writer, halves without a
    /// partner included (flush and stop).
    fn finish_pending(&mut self) {
        self.drain_kernel();
        self.settle_round();
        self.refresh_kernel_counters();
        self.expire(true);
        self.write();
    }

    fn drain_kernel(&mut self) {
        let Some(mut kernel) = self.kernel.take() else {
            return;
        };
        kernel.drain(&mut |entry, key| {
            self.kernel_half(entry, key);
            if self.batch.len() >= BATCH_RECORDS {
                self.write();
            }
        });
        self.kernel = Some(kernel);
    }

    /// Reads the kernel's loss counters (a few bpf() calls): once per
    /// batch period, not per drain.
    fn refresh_kernel_counters(&mut self) {
        if let Some(kernel) = self.kernel.as_mut() {
            self.kernel_counters = kernel.counters();
        }
    }

    fn push(&mut self, record: CallEntry) {
        self.batch.push(record);
    }

    fn gateway_half(&mut self, key: JoinKey, half: GatewayHalf) {
        match self.waiting_kernel.remove(&key) {
            Some((mut kernel, _)) => {
                kernel.absorb_gateway_half(&half);
                self.push(kernel);
            }
            None => {
                let earlier = self.round_index.insert(key, self.round_halves.len());
                self.round_halves.push(half);
                if let Some(half) = earlier.and_then(|at| self.round_halves.get(at)) {
                    self.write_gateway_half_alone(*half);
                }
            }
        }
    }

    /// The halves of this round that found no kernel record wait on in the
    /// join map.
    fn settle_round(&mut self) {
        let mut round_index = std::mem::take(&mut self.round_index);
        for (key, at) in round_index.drain() {
            if let Some(&half) = self.round_halves.get(at) {
                if let Some((earlier, _)) =
                    self.waiting_gateway.insert(key, (half, self.round_start))
                {
                    self.write_gateway_half_alone(earlier);
                }
            }
        }
        // Given back empty, its capacity kept for the next round.
        self.round_index = round_index;
        self.round_halves.clear();
    }

    fn kernel_half(&mut self, mut entry: CallEntry, key: Option<JoinKey>) {
        let Some(key) = key else {
            self.push(entry);
            return;
        };
        if let Some(half) = self
            .round_index
            .remove(&key)
            .and_then(|at| self.round_halves.get(at))
        {
            entry.absorb_gateway_half(half);
            self.push(entry);
            return;
        }
        match self.waiting_gateway.remove(&key) {
            Some((half, _)) => {
                entry.absorb_gateway_half(&half);
                self.push(entry);
            }
            None => {
                if let Some((earlier, _)) =
                    self.waiting_kernel.insert(key, (entry, self.round_start))
                {
                    self.write_kernel_half_alone(earlier);
                }
            }
        }
    }

    /// A gateway half whose kernel record did not come: written on its own.
    /// Besides the join window running out, this happens when a second half
    /// with the same key comes first (the client reused its port for a new
    /// connection within the window): the earlier one is not dropped.
    fn write_gateway_half_alone(&mut self, half: GatewayHalf) {
        let now = super::ticket::now_unix_ns();
        self.push(CallEntry::from_lone_gateway_half(half, now));
    }

    /// A kernel record whose gateway half did not come (for the same
    /// reasons as above): written on its own, saying so.
    fn write_kernel_half_alone(&mut self, mut record: CallEntry) {
        record
            .notes
            .push("seen by the kernel only: the gateway did not route this request".into());
        self.push(record);
    }

    /// Writes halves whose partner did not come within the join window.
    fn expire(&mut self, everything: bool) {
        if self.waiting_gateway.is_empty() && self.waiting_kernel.is_empty() {
            return;
        }
        let old = |at: &Instant| everything || at.elapsed() >= JOIN_WINDOW;
        let gateway: Vec<JoinKey> = self
            .waiting_gateway
            .iter()
            .filter(|(_, (_, at))| old(at))
            .map(|(k, _)| *k)
            .collect();
        for key in gateway {
            if let Some((half, _)) = self.waiting_gateway.remove(&key) {
                self.write_gateway_half_alone(half);
            }
        }
        let kernel: Vec<JoinKey> = self
            .waiting_kernel
            .iter()
            .filter(|(_, (_, at))| old(at))
            .map(|(k, _)| *k)
            .collect();
        for key in kernel {
            if let Some((record, _)) = self.waiting_kernel.remove(&key) {
                self.write_kernel_half_alone(record);
            }
        }
    }

    /// Hands the batch to the writer, with the kernel counters when they
    /// changed (so the store's counters account for the records with them).
    fn write(&mut self) {
        let counters_changed = self.kernel_counters != self.sent_counters;
        if self.batch.is_empty() && !counters_changed {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, self.writer.empty_batch(BATCH_RECORDS));
        let counters = if counters_changed {
            self.sent_counters = self.kernel_counters.clone();
            self.kernel_counters.clone()
        } else {
            Vec::new()
        };
        self.writer.write(batch, counters);
    }
}

/// Waits for the kernel's wake-ups on a ring buffer: an epoll instance
/// watching it edge-triggered. Level-triggered (plain `poll`) returns at
/// once whenever a single record is pending, so under load the collector
/// went round without sleeping, draining a few records per round (its CPU
/// per request did not change measurably; its syscalls did: with the
/// counters read per drain, 7 500 bpf() calls a second).
struct RingWaiter {
    epoll: std::os::fd::OwnedFd,
}

impl RingWaiter {
    fn new(ring_fd: std::os::fd::RawFd) -> std::io::Result<RingWaiter> {
        use std::os::fd::FromRawFd;
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
        // new fd that nothing else owns.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` was just returned by epoll_create1 and is owned here only.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `event` is valid for the call.
        let rc = unsafe { libc::epoll_ctl(raw, libc::EPOLL_CTL_ADD, ring_fd, &mut event) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RingWaiter { epoll })
    }

    /// Sleeps until the kernel wakes the ring's readers or `timeout` passes.
    fn wait(&self, timeout: Duration) {
        use std::os::fd::AsRawFd;
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // Rounded up: a timeout rounded down to 0 ms would spin until the deadline.
        let millis = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(100);
        // SAFETY: room for exactly one event, as passed.
        unsafe {
            libc::epoll_wait(self.epoll.as_raw_fd(), &mut event, 1, millis);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The channel holds `CHANNEL_CAPACITY` calls at most: the ones past it
    /// are counted as dropped, and room comes back as the collector receives.
    #[test]
    fn a_full_channel_drops_and_counts() {
        let (sender, receiver) = mpsc::channel();
        let counters = Arc::new(CollectorCounters::default());
        let sink = LogSink(Arc::new(SinkShared {
            sender,
            counters: counters.clone(),
        }));
        for _ in 0..CHANNEL_CAPACITY + 3 {
            sink.send_call(Box::default());
        }
        assert_eq!(counters.channel_drops.load(Ordering::Relaxed), 3);
        assert_eq!(counters.queued.load(Ordering::Relaxed), CHANNEL_CAPACITY);

        // What the collector does after a round of receiving.
        let mut received = 0;
        while let Ok(Event::Call(..)) = receiver.try_recv() {
            received += 1;
        }
        assert_eq!(received, CHANNEL_CAPACITY);
        counters.queued.fetch_sub(received, Ordering::Relaxed);
        sink.send_call(Box::default());
        assert_eq!(counters.channel_drops.load(Ordering::Relaxed), 3);
        assert!(matches!(receiver.try_recv(), Ok(Event::Call(..))));
    }

    /// A collector without a kernel feed, writing to a fresh store in `dir`.
    fn collector_in(dir: &std::path::Path) -> Collector {
        let _ = std::fs::remove_dir_all(dir);
        let store = LogStore::open(&dir.join("logs.db")).unwrap();
        let counters = Arc::new(CollectorCounters::default());
        let config = CollectorConfig {
            retention: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        let writer = StoreWriter::start(store, config, counters.clone()).unwrap();
        Collector::new(writer, None, counters)
    }

    fn key(seq: u32) -> JoinKey {
        JoinKey {
            peer_ip: "127.0.0.1".parse().unwrap(),
            peer_port: 40000,
            seq,
        }
    }

    fn half(model: &'static str) -> GatewayHalf {
        let mut half = GatewayHalf::new(Instant::now());
        half.facts.model = Some(model);
        half
    }

    fn kernel(seq: u32) -> CallEntry {
        CallEntry {
            time_unix_ns: i64::from(seq),
            ..CallEntry::default()
        }
    }

    /// What the collector has batched: each record's time and model.
    fn batched(collector: &Collector) -> Vec<(i64, Option<&str>)> {
        collector
            .batch
            .iter()
            .map(|e| (e.time_unix_ns, e.facts.model))
            .collect()
    }

    /// A gateway half meets its kernel record whichever comes first and
    /// whether the kernel's comes in the same drain round or a later one.
    #[test]
    fn halves_join_in_any_order_and_round() {
        let dir = std::env::temp_dir().join(format!("apx-collector-join-{}", std::process::id()));
        let mut collector = collector_in(&dir);

        // Same round, the gateway's half first (the usual case).
        collector.gateway_half(key(0), half("same-round"));
        collector.kernel_half(kernel(0), Some(key(0)));
        // The kernel's record a round later.
        collector.gateway_half(key(1), half("next-round"));
        collector.settle_round();
        collector.kernel_half(kernel(1), Some(key(1)));
        // The kernel's record first.
        collector.kernel_half(kernel(2), Some(key(2)));
        collector.gateway_half(key(2), half("kernel-first"));
        collector.settle_round();

        assert_eq!(
            batched(&collector),
            [
                (0, Some("same-round")),
                (1, Some("next-round")),
                (2, Some("kernel-first"))
            ]
        );
        assert!(collector.waiting_gateway.is_empty() && collector.waiting_kernel.is_empty());
        assert!(collector.round_index.is_empty() && collector.round_halves.is_empty());
        collector.writer.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A second half with the same key before the first met its partner
    /// (a client port reused within the join window) never makes the first
    /// one vanish: it is written on its own, in every map it can wait in.
    #[test]
    fn a_reused_key_writes_the_earlier_half_alone() {
        let dir = std::env::temp_dir().join(format!("apx-collector-reuse-{}", std::process::id()));
        let mut collector = collector_in(&dir);

        // Twice in one round, then the kernel's record: it joins the later.
        collector.gateway_half(key(0), half("first"));
        collector.gateway_half(key(0), half("second"));
        collector.kernel_half(kernel(0), Some(key(0)));
        assert_eq!(batched(&collector)[1..], [(0, Some("second"))]);
        assert_eq!(batched(&collector)[0].1, Some("first"));
        collector.batch.clear();

        // One waiting from an earlier round, one in this round.
        collector.gateway_half(key(1), half("older"));
        collector.settle_round();
        collector.gateway_half(key(1), half("newer"));
        collector.settle_round();
        assert_eq!(batched(&collector).len(), 1);
        assert_eq!(batched(&collector)[0].1, Some("older"));
        collector.kernel_half(kernel(1), Some(key(1)));
        assert_eq!(batched(&collector)[1..], [(1, Some("newer"))]);
        collector.batch.clear();

        // Two kernel records waiting for the same gateway half.
        collector.kernel_half(kernel(2), Some(key(2)));
        collector.kernel_half(kernel(3), Some(key(2)));
        assert_eq!(batched(&collector), [(2, None)]);
        assert!(collector.batch[0].notes[0].starts_with("seen by the kernel only"));

        assert!(collector.round_index.is_empty() && collector.round_halves.is_empty());
        assert!(collector.waiting_gateway.is_empty());
        assert_eq!(collector.waiting_kernel.len(), 1);
        collector.writer.stop();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
