//! Request logging: the header elements of every call, captured in the
//! kernel by eBPF or, where that is unavailable, in user space; joined with
//! what the gateway knows (key, model, tokens) and stored by a collector
//! thread in the embedded log store.

pub mod capture;
pub mod collector;
pub mod ebpf;
pub mod ebpf_loader;
pub mod fingerprint;
pub mod record;
pub mod ticket;
pub mod usage;
pub mod writer;

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Request;

use crate::config::{CaptureMode, Config};
use crate::store::logs::LogStore;
use capture::CaptureList;
use collector::{CollectorConfig, LogSink};
use fingerprint::FingerprintKey;
use record::{CallEntry, Capture};
pub use ticket::{ConnContext, GatewayFacts, LogTicket};

/// The capture mode in effect, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveCapture {
    pub capture: Option<Capture>,
    pub reason: String,
}

impl ActiveCapture {
    pub fn name(&self) -> &'static str {
        self.capture.map_or("off", Capture::name)
    }
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot open the log store")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot read or create the fingerprint key {path}")]
    FingerprintKey {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the log collector thread")]
    Thread(#[source] std::io::Error),
    #[error("logging.capture = \"ebpf\" but eBPF capture cannot be used: {0}")]
    EbpfUnavailable(String),
}

pub struct Logging {
    active: ActiveCapture,
    sink: Option<LogSink>,
    capture_list: CaptureList,
    fingerprints: Option<FingerprintKey>,
    collector: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The gateway's listening socket, which the kernel programs watch.
#[derive(Clone, Copy, Debug)]
pub struct ListenerInfo {
    pub fd: u32,
    pub port: u16,
}

/// Tries eBPF capture where it is asked for or allowed; falls back to user
/// space (mode `auto`) or fails (mode `ebpf`) with the kernel's reason.
fn choose_capture(
    mode: CaptureMode,
    listener: Option<ListenerInfo>,
    fingerprints: &FingerprintKey,
    extra_headers: &[String],
) -> Result<(ActiveCapture, Option<ebpf::EbpfCapture>), LoggingError> {
    let userspace = |reason: String| {
        Ok((
            ActiveCapture {
                capture: Some(Capture::Userspace),
                reason,
            },
            None,
        ))
    };
    if mode == CaptureMode::Userspace {
        return userspace("logging.capture = \"userspace\"".into());
    }
    let attempt = match listener {
        None => Err("the listening socket is not known".to_string()),
        Some(listener) => ebpf::EbpfCapture::start(&ebpf::EbpfSettings {
            listener_fd: listener.fd,
            listener_port: listener.port,
            fingerprint_key: *fingerprints,
            extra_headers: extra_headers
                .iter()
                .take(apx_capture_common::EXTRA_SLOTS)
                .cloned()
                .collect(),
        }),
    };
    match (attempt, mode) {
        (Ok(capture), _) => {
            let reason = format!(
                "eBPF programs loaded and attached on {} in {} ms{}",
                capture.layer().name(),
                capture.load_time.as_millis(),
                if capture.loaded_by_helper {
                    " by a loader process"
                } else {
                    ""
                }
            );
            Ok((
                ActiveCapture {
                    capture: Some(Capture::Ebpf),
                    reason,
                },
                Some(capture),
            ))
        }
        (Err(err), CaptureMode::Ebpf) => Err(LoggingError::EbpfUnavailable(err)),
        (Err(err), _) => userspace(format!(
            "eBPF capture unavailable ({err}); records come from user space"
        )),
    }
}

impl Logging {
    /// Logging switched off.
    pub fn off(reason: &str) -> Logging {
        Logging {
            active: ActiveCapture {
                capture: None,
                reason: reason.to_string(),
            },
            sink: None,
            capture_list: CaptureList::new(&[]),
            fingerprints: None,
            collector: Mutex::new(None),
        }
    }

    /// Opens the store, starts the collector and picks the capture mode:
    /// eBPF when asked or possible, else user space, saying why.
    pub fn start(config: &Config, listener: Option<ListenerInfo>) -> Result<Logging, LoggingError> {
        let settings = &config.logging;
        if settings.capture == CaptureMode::Off {
            return Ok(Logging::off("logging.capture = \"off\""));
        }
        let key_path = config.state_dir.join("fingerprint.key");
        let fingerprints = FingerprintKey::load_or_create(&key_path).map_err(|source| {
            LoggingError::FingerprintKey {
                path: key_path.display().to_string(),
                source,
            }
        })?;
        let store = LogStore::open(&config.log_store_path())?;
        let (active, ebpf) =
            choose_capture(settings.capture, listener, &fingerprints, &settings.headers)?;
        let kernel = ebpf.map(|feed| Box::new(feed) as Box<dyn collector::KernelFeed>);
        let (sink, handle) = collector::start(
            store,
            CollectorConfig {
                retention: settings.retention.0,
                max_bytes: settings.max_size.0,
            },
            kernel,
        )
        .map_err(LoggingError::Thread)?;
        Ok(Logging {
            active,
            sink: Some(sink),
            capture_list: CaptureList::new(&settings.headers),
            fingerprints: Some(fingerprints),
            collector: Mutex::new(Some(handle)),
        })
    }

    pub fn active(&self) -> &ActiveCapture {
        &self.active
    }

    /// Opens the ticket for a request (`None` when logging is off).
    pub fn begin<B>(&self, request: &Request<B>, conn: &ConnContext) -> Option<Box<LogTicket>> {
        let sink = self.sink.as_ref()?;
        let started = Instant::now();
        let capture = self.active.capture?;
        if capture == Capture::Ebpf && is_http1(request.version()) {
            // The kernel captures the header elements: the ticket carries
            // only what the gateway adds, and the key to join them.
            let join = collector::JoinKey {
                peer_ip: conn.peer.ip().to_canonical(),
                peer_port: conn.peer.port(),
                seq: conn.seq,
            };
            return Some(Box::new(LogTicket::kernel(sink.clone(), join, started)));
        }
        let mut record = self.capture_in_userspace(request, conn);
        if capture == Capture::Ebpf {
            // The kernel programs parse HTTP/1.x only: HTTP/2 (h2c) calls
            // are captured here, and say so.
            let note = "HTTP/2: captured in user space (the kernel programs parse HTTP/1.x)";
            record.notes.insert(0, note.into());
        }
        Some(Box::new(LogTicket::userspace(
            sink.clone(),
            record,
            started,
        )))
    }

    /// The header elements the kernel programs would take, from the
    /// request hyper parsed; boxed from the start, as the ticket keeps it.
    fn capture_in_userspace<B>(&self, request: &Request<B>, conn: &ConnContext) -> Box<CallEntry> {
        let mut record = Box::new(CallEntry {
            time_unix_ns: ticket::now_unix_ns(),
            client: Some((conn.peer.ip().to_canonical(), conn.peer.port())),
            server_port: Some(conn.local_port),
            method: record::method_name(request.method().as_str()),
            http_version: Cow::Borrowed(version_text(request.version())),
            ..CallEntry::default()
        });
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let cap = apx_capture_common::PATH_CAP;
        if target.len() > cap {
            record.notes.push("path truncated".into());
        }
        record.path = truncate_utf8(target, cap).into();
        let (headers, truncated) = self.capture_list.headers(request.headers());
        record.headers = headers;
        if truncated {
            record.notes.push("a header value was truncated".into());
        }
        if let Some(key) = &self.fingerprints {
            record.credentials = capture::credentials(request.headers(), key);
        }
        record.request_bytes = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        record
    }

    /// Waits until every record sent so far is in the store.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.sink.as_ref().is_none_or(|sink| sink.flush(timeout))
    }

    /// Writes what is pending and stops the collector.
    pub fn stop(&self, timeout: Duration) {
        let Some(sink) = &self.sink else { return };
        // The collector drains the kernel's last records before it writes;
        // the programs detach when it ends.
        sink.flush(timeout);
        sink.stop();
        let handle = self.collector.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Records written to the store since start.
    pub fn written(&self) -> u64 {
        self.sink.as_ref().map_or(0, |s| {
            s.counters()
                .written
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Records the gateway lost before they reached the store (a full
    /// channel to the collector, a full queue to the disk).
    pub fn drops(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.sink.as_ref().map_or(0, |s| {
            let counters = s.counters();
            counters.channel_drops.load(Relaxed) + counters.store_backlog_drops.load(Relaxed)
        })
    }
}

fn is_http1(version: http::Version) -> bool {
    matches!(version, http::Version::HTTP_10 | http::Version::HTTP_11)
}

fn version_text(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

pub(crate) fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
