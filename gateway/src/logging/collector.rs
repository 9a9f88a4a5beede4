//! The collector: a background thread that receives finished calls (and, in
//! eBPF mode, kernel records), joins them, and writes them to the log store
//! in batches, off the request path. Nothing here can block a request: the
//! channel is bounded and a full channel drops the record and counts it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::record::CallRecord;
use crate::store::logs::LogStore;

/// Records waiting in the channel at most; beyond it they are dropped and counted.
const CHANNEL_CAPACITY: usize = 64 * 1024;
/// A batch is written when it has this many records…
const BATCH_RECORDS: usize = 512;
/// …or at the end of each drain, every this long.
const BATCH_DELAY: Duration = Duration::from_millis(50);
/// How long one half of a call waits for the other before it is written alone.
const JOIN_WINDOW: Duration = Duration::from_secs(2);
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Identifies a request across the kernel and the gateway: the client's
/// address and port, and the request's number on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct JoinKey {
    pub peer_ip: IpAddr,
    pub peer_port: u16,
    pub seq: u32,
}

/// The header half of a call, as the kernel captured it.
pub struct KernelCall {
    pub key: Option<JoinKey>,
    pub record: CallRecord,
}

pub enum Event {
    /// A finished call from the gateway; with a join key in eBPF mode.
    Call(Box<CallRecord>, Option<JoinKey>),
    Kernel(Box<KernelCall>),
    /// Kernel-side loss counters, absolute values.
    KernelCounters(Vec<(String, u64)>),
    /// Write everything pending, then answer.
    Flush(SyncSender<()>),
    Stop,
}

/// Counters the collector keeps and stores.
#[derive(Default)]
pub struct CollectorCounters {
    /// Records dropped because the channel was full.
    pub channel_drops: AtomicU64,
    /// Records that failed to be written.
    pub write_failures: AtomicU64,
    pub written: AtomicU64,
}

/// The sending side, cloned into every ticket.
#[derive(Clone)]
pub struct LogSink {
    sender: SyncSender<Event>,
    counters: Arc<CollectorCounters>,
}

impl LogSink {
    /// Never blocks: a full channel drops the event and counts it.
    pub fn send(&self, event: Event) {
        match self.sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.channel_drops.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Blocks until the collector wrote everything sent before.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::sync_channel(1);
        if self.sender.send(Event::Flush(ack)).is_err() {
            return false;
        }
        done.recv_timeout(timeout).is_ok()
    }

    pub fn counters(&self) -> &CollectorCounters {
        &self.counters
    }
}

pub struct CollectorConfig {
    pub retention: Duration,
    pub max_bytes: u64,
}

/// Starts the collector thread on an open store.
pub fn start(
    store: LogStore,
    config: CollectorConfig,
) -> std::io::Result<(LogSink, std::thread::JoinHandle<()>)> {
    let (sender, receiver) = mpsc::sync_channel(CHANNEL_CAPACITY);
    let counters = Arc::new(CollectorCounters::default());
    let sink = LogSink {
        sender,
        counters: counters.clone(),
    };
    let handle = std::thread::Builder::new()
        .name("apx-log-collector".into())
        .spawn(move || Collector::new(store, config, counters).run(receiver))?;
    Ok((sink, handle))
}

struct Collector {
    store: LogStore,
    config: CollectorConfig,
    counters: Arc<CollectorCounters>,
    batch: Vec<CallRecord>,
    waiting_gateway: HashMap<JoinKey, (Box<CallRecord>, Instant)>,
    waiting_kernel: HashMap<JoinKey, (Box<KernelCall>, Instant)>,
    kernel_counters: Vec<(String, u64)>,
    last_trim: Instant,
}

impl Collector {
    fn new(
        store: LogStore,
        config: CollectorConfig,
        counters: Arc<CollectorCounters>,
    ) -> Collector {
        Collector {
            store,
            config,
            counters,
            batch: Vec::with_capacity(BATCH_RECORDS),
            waiting_gateway: HashMap::new(),
            waiting_kernel: HashMap::new(),
            kernel_counters: Vec::new(),
            last_trim: Instant::now(),
        }
    }

    /// Wakes every `BATCH_DELAY` and drains the channel. Sleeping instead of
    /// blocking on the channel matters: a receiver blocked in `recv` is woken
    /// (a futex wake and a context switch) by every request's record.
    fn run(mut self, receiver: Receiver<Event>) {
        loop {
            std::thread::sleep(BATCH_DELAY);
            loop {
                match receiver.try_recv() {
                    Ok(Event::Call(record, None)) => self.push(*record),
                    Ok(Event::Call(record, Some(key))) => self.gateway_half(key, record),
                    Ok(Event::Kernel(call)) => self.kernel_half(call),
                    Ok(Event::KernelCounters(values)) => {
                        if values != self.kernel_counters {
                            self.kernel_counters = values;
                            self.store_counters();
                        }
                    }
                    Ok(Event::Flush(ack)) => {
                        self.expire(true);
                        self.write();
                        self.store_counters();
                        let _ = ack.send(());
                    }
                    Ok(Event::Stop) | Err(TryRecvError::Disconnected) => {
                        self.expire(true);
                        self.write();
                        self.store_counters();
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                }
                if self.batch.len() >= BATCH_RECORDS {
                    self.write();
                }
            }
            self.expire(false);
            self.write();
            if self.last_trim.elapsed() >= TRIM_EVERY {
                self.trim();
            }
        }
    }

    fn push(&mut self, record: CallRecord) {
        self.batch.push(record);
    }

    fn gateway_half(&mut self, key: JoinKey, record: Box<CallRecord>) {
        match self.waiting_kernel.remove(&key) {
            Some((kernel, _)) => self.push(merge(kernel.record, *record)),
            None => {
                self.waiting_gateway.insert(key, (record, Instant::now()));
            }
        }
    }

    fn kernel_half(&mut self, call: Box<KernelCall>) {
        let Some(key) = call.key else {
            self.push(call.record);
            return;
        };
        match self.waiting_gateway.remove(&key) {
            Some((gateway, _)) => self.push(merge(call.record, *gateway)),
            None => {
                self.waiting_kernel.insert(key, (call, Instant::now()));
            }
        }
    }

    /// Writes halves whose partner did not come within the join window.
    fn expire(&mut self, everything: bool) {
        let old = |at: &Instant| everything || at.elapsed() >= JOIN_WINDOW;
        let gateway: Vec<JoinKey> = self
            .waiting_gateway
            .iter()
            .filter(|(_, (_, at))| old(at))
            .map(|(k, _)| *k)
            .collect();
        for key in gateway {
            if let Some((mut record, _)) = self.waiting_gateway.remove(&key) {
                record.partial = true;
                record.notes.push(
                    "no kernel record arrived for this call (see the kernel drop counters)".into(),
                );
                self.push(*record);
            }
        }
        let kernel: Vec<JoinKey> = self
            .waiting_kernel
            .iter()
            .filter(|(_, (_, at))| old(at))
            .map(|(k, _)| *k)
            .collect();
        for key in kernel {
            if let Some((call, _)) = self.waiting_kernel.remove(&key) {
                let mut record = call.record;
                record
                    .notes
                    .push("seen by the kernel only: the gateway did not route this request".into());
                self.push(record);
            }
        }
    }

    fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let count = self.batch.len() as u64;
        match self.store.insert(&self.batch) {
            Ok(()) => {
                self.counters.written.fetch_add(count, Ordering::Relaxed);
            }
            Err(err) => {
                self.counters
                    .write_failures
                    .fetch_add(count, Ordering::Relaxed);
                tracing::warn!(error = %err, records = count, "cannot write request records");
            }
        }
        self.batch.clear();
        self.store_counters();
    }

    fn store_counters(&self) {
        let mut values = vec![
            (
                "gateway.channel_drops".to_string(),
                self.counters.channel_drops.load(Ordering::Relaxed),
            ),
            (
                "gateway.write_failures".to_string(),
                self.counters.write_failures.load(Ordering::Relaxed),
            ),
        ];
        values.extend(self.kernel_counters.iter().cloned());
        for (name, value) in values {
            if let Err(err) = self.store.set_counter(&name, value) {
                tracing::debug!(error = %err, "cannot store a counter");
            }
        }
    }

    fn trim(&mut self) {
        self.last_trim = Instant::now();
        match self
            .store
            .trim(self.config.retention, self.config.max_bytes)
        {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "log retention removed old records"),
            Err(err) => tracing::warn!(error = %err, "log retention failed"),
        }
    }
}

/// The kernel's header elements with the gateway's facts and timings.
fn merge(kernel: CallRecord, gateway: CallRecord) -> CallRecord {
    let mut out = kernel;
    out.key_id = gateway.key_id;
    out.key_name = gateway.key_name;
    out.model = gateway.model;
    out.upstream_model = gateway.upstream_model;
    out.provider = gateway.provider;
    out.provider_kind = gateway.provider_kind;
    out.upstream_status = gateway.upstream_status;
    out.stream = gateway.stream;
    out.input_tokens = gateway.input_tokens;
    out.output_tokens = gateway.output_tokens;
    out.first_chunk_ms = gateway.first_chunk_ms;
    out.error = gateway.error;
    if out.status.is_none() {
        out.status = gateway.status;
    }
    out.partial |= gateway.partial;
    out.notes.extend(gateway.notes);
    out
}
