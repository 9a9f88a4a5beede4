//! The store writer: a thread that owns the log store and writes the
//! collector's batches. A slow disk (a WAL checkpoint's fsync, a busy
//! device) then only delays this thread; the collector keeps draining the
//! kernel's ring buffer and the gateway's channel meanwhile, so neither
//! fills up because of the disk. Batches wait in a bounded queue; a batch
//! that finds the queue full is dropped and counted, never waited for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use super::collector::{CollectorConfig, CollectorCounters};
use super::record::CallEntry;
use crate::store::logs::LogStore;

/// Batches waiting for the disk at most (×512 records at the most each).
const QUEUE_BATCHES: usize = 64;
/// Written batches kept for the collector to fill again. A batch is a
/// 217 KB buffer: allocated by the collector and freed here, a new one
/// every 15 ms under load cost the collector an allocator slow path and
/// page faults (≈ 15 % of its profile) and kept freed buffers resident.
const SPARE_BATCHES: usize = 2;
/// The log store's SQLite page cache, in KiB. Writing appends blocks and
/// updates a few index pages; the default 2 MiB cache only held pages
/// already written, resident for nothing.
const STORE_CACHE_KIB: i64 = 256;
const TRIM_EVERY: Duration = Duration::from_secs(60);

enum Job {
    /// Records, and the kernel's counters as they were when they were drained.
    Batch(Vec<CallEntry>, Vec<(String, u64)>),
    /// Answer once everything queued before is written.
    Flush(SyncSender<()>),
}

pub struct StoreWriter {
    /// `None` once stopped; dropping it ends the thread after the queue.
    jobs: Option<SyncSender<Job>>,
    /// Emptied batches coming back, their buffers kept.
    spares: Receiver<Vec<CallEntry>>,
    counters: Arc<CollectorCounters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreWriter {
    pub fn start(
        store: LogStore,
        config: CollectorConfig,
        counters: Arc<CollectorCounters>,
    ) -> std::io::Result<StoreWriter> {
        Self::with_queue(store, config, counters, QUEUE_BATCHES)
    }

    fn with_queue(
        store: LogStore,
        config: CollectorConfig,
        counters: Arc<CollectorCounters>,
        batches: usize,
    ) -> std::io::Result<StoreWriter> {
        let (jobs, queue) = mpsc::sync_channel(batches);
        let (return_spare, spares) = mpsc::sync_channel(SPARE_BATCHES);
        if let Err(err) = store.limit_cache_kib(STORE_CACHE_KIB) {
            tracing::debug!(error = %err, "cannot limit the log store's page cache");
        }
        let thread = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("apx-log-writer".into())
                .spawn(move || Writer::new(store, config, counters, return_spare).run(queue))?
        };
        Ok(StoreWriter {
            jobs: Some(jobs),
            spares,
            counters,
            thread: Some(thread),
        })
    }

    /// Queues a batch; never blocks (a full queue drops it and counts it).
    pub fn write(&self, batch: Vec<CallEntry>, kernel_counters: Vec<(String, u64)>) {
        let Some(jobs) = &self.jobs else { return };
        let count = batch.len() as u64;
        match jobs.try_send(Job::Batch(batch, kernel_counters)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters
                    .store_backlog_drops
                    .fetch_add(count, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// An empty batch to fill: a written one back from the writer, or new.
    pub fn empty_batch(&self, capacity: usize) -> Vec<CallEntry> {
        self.spares
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }

    /// Answers `ack` once everything queued before is written (waits for
    /// room in the queue: flushing is for shutdown and tests).
    pub fn flush(&self, ack: SyncSender<()>) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Flush(ack));
        }
    }

    /// Writes what is queued and ends the thread.
    pub fn stop(mut self) {
        // The writer ends once the queue is empty and the sender is gone.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    store: LogStore,
    config: CollectorConfig,
    counters: Arc<CollectorCounters>,
    /// Counter values as last written to the store.
    stored_counters: Vec<(String, u64)>,
    kernel_counters: Vec<(String, u64)>,
    last_trim: Instant,
    return_spare: SyncSender<Vec<CallEntry>>,
}

impl Writer {
    fn new(
        store: LogStore,
        config: CollectorConfig,
        counters: Arc<CollectorCounters>,
        return_spare: SyncSender<Vec<CallEntry>>,
    ) -> Writer {
        Writer {
            return_spare,
            store,
            config,
            counters,
            stored_counters: Vec::new(),
            kernel_counters: Vec::new(),
            last_trim: Instant::now(),
        }
    }

    fn run(mut self, queue: Receiver<Job>) {
        loop {
            match queue.recv_timeout(TRIM_EVERY) {
                Ok(Job::Batch(mut batch, kernel_counters)) => {
                    if !kernel_counters.is_empty() {
                        self.kernel_counters = kernel_counters;
                    }
                    self.write(&batch);
                    batch.clear();
                    // Two spares at most wait; any more are freed here.
                    let _ = self.return_spare.try_send(batch);
                }
                Ok(Job::Flush(ack)) => {
                    self.store_counters();
                    let _ = ack.send(());
                }
                Err(RecvTimeoutError::Timeout) => self.store_counters(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.store_counters();
                    return;
                }
            }
            if self.last_trim.elapsed() >= TRIM_EVERY {
                self.trim();
            }
        }
    }

    /// Writes the batch, and the counters that changed, in one transaction.
    fn write(&mut self, batch: &[CallEntry]) {
        let count = batch.len() as u64;
        let changed = self.changed_counters();
        match self.store.insert(batch, &changed) {
            Ok(()) => {
                self.counters.written.fetch_add(count, Ordering::Relaxed);
                self.remember_stored(changed);
            }
            Err(err) => {
                self.counters
                    .write_failures
                    .fetch_add(count, Ordering::Relaxed);
                tracing::warn!(error = %err, records = count, "cannot write request records");
                self.store_counters();
            }
        }
    }

    /// Writes the counters that changed since they were last stored.
    fn store_counters(&mut self) {
        let changed = self.changed_counters();
        if changed.is_empty() {
            return;
        }
        match self.store.insert(&[], &changed) {
            Ok(()) => self.remember_stored(changed),
            Err(err) => tracing::debug!(error = %err, "cannot store the counters"),
        }
    }

    fn changed_counters(&self) -> Vec<(String, u64)> {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let gateway = [
            ("gateway.channel_drops", load(&self.counters.channel_drops)),
            (
                "gateway.store_backlog_drops",
                load(&self.counters.store_backlog_drops),
            ),
            (
                "gateway.write_failures",
                load(&self.counters.write_failures),
            ),
        ];
        let kernel = self.kernel_counters.iter().map(|(n, v)| (n.as_str(), *v));
        gateway
            .into_iter()
            .chain(kernel)
            .filter(|(name, value)| {
                !self
                    .stored_counters
                    .iter()
                    .any(|(stored, old)| stored == name && old == value)
            })
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    }

    fn remember_stored(&mut self, written: Vec<(String, u64)>) {
        for (name, value) in written {
            match self.stored_counters.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => self.stored_counters.push((name, value)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::record::Capture;
    use crate::store::logs::LogQuery;

    fn entry(n: i64) -> CallEntry {
        CallEntry {
            capture: Some(Capture::Userspace),
            time_unix_ns: 1_700_000_000_000_000_000 + n,
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(200),
            ..CallEntry::default()
        }
    }

    /// A written batch comes back empty with its buffer for the collector
    /// to fill again; the records in it are stored.
    #[test]
    fn written_batches_come_back_empty_for_reuse() {
        let dir = std::env::temp_dir().join(format!("apx-writer-spare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("logs.db");
        let counters = Arc::new(CollectorCounters::default());
        let config = CollectorConfig {
            retention: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        let writer = StoreWriter::start(LogStore::open(&path).unwrap(), config, counters).unwrap();
        let mut batch = Vec::with_capacity(777);
        batch.extend((0..5).map(entry));
        writer.write(batch, Vec::new());
        let (ack, done) = mpsc::sync_channel(1);
        writer.flush(ack);
        done.recv_timeout(Duration::from_secs(10)).unwrap();
        let spare = writer.empty_batch(1);
        assert!(spare.is_empty());
        assert_eq!(spare.capacity(), 777);
        assert_eq!(
            writer.empty_batch(1).capacity(),
            1,
            "only one batch was written"
        );
        writer.stop();
        let stored = LogStore::open(&path)
            .unwrap()
            .query(&LogQuery::default())
            .unwrap();
        assert_eq!(stored.len(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store another connection keeps locked stands for a stalled disk:
    /// batches are then dropped and counted, `write` never waits, and once
    /// the disk is back every batch sent is either stored or counted.
    #[test]
    fn a_stalled_store_drops_and_counts_but_never_blocks() {
        let dir = std::env::temp_dir().join(format!("apx-writer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("logs.db");
        let store = LogStore::open(&path).unwrap();
        let counters = Arc::new(CollectorCounters::default());
        let config = CollectorConfig {
            retention: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        let writer = StoreWriter::with_queue(store, config, counters.clone(), 2).unwrap();

        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut sent = 0u64;
        let started = Instant::now();
        while counters.store_backlog_drops.load(Ordering::Relaxed) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "no batch was ever dropped"
            );
            let batch: Vec<CallEntry> = (0..10).map(|i| entry(sent as i64 + i)).collect();
            let at = Instant::now();
            writer.write(batch, Vec::new());
            assert!(
                at.elapsed() < Duration::from_millis(50),
                "write waited for the disk"
            );
            sent += 10;
            std::thread::sleep(Duration::from_millis(5));
        }
        blocker.execute_batch("COMMIT").unwrap();

        let (ack, done) = mpsc::sync_channel(1);
        writer.flush(ack);
        done.recv_timeout(Duration::from_secs(10)).unwrap();
        writer.stop();
        let store = LogStore::open(&path).unwrap();
        let stored = store
            .query(&LogQuery {
                limit: Some(100_000),
                ..LogQuery::default()
            })
            .unwrap()
            .len() as u64;
        let dropped = counters.store_backlog_drops.load(Ordering::Relaxed);
        assert!(
            dropped > 0 && stored > 0,
            "stored {stored}, dropped {dropped}"
        );
        assert_eq!(stored + dropped, sent);
        let stored_counter = store
            .counters()
            .unwrap()
            .into_iter()
            .find(|(name, _)| name == "gateway.store_backlog_drops");
        assert_eq!(stored_counter.map(|(_, v)| v), Some(dropped));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
