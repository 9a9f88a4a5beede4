//! The eBPF loader process: loading the programs parses the kernel's BTF
//! (≈ 13 MB of heap; the gateway's peak was 31 MiB a second after start,
//! 12 MiB with the loader process), so the `apx` binary has a short-lived
//! copy of itself do it. The gateway sends it
//! what to load over a Unix socket (its stdin), it loads and attaches the
//! programs for the gateway's pid and sends back every fd that keeps them
//! running (`apx_capture::handoff`), then exits; the gateway holds those
//! fds, so dropping its capture still detaches everything.
//!
//! Only a binary that registers itself (`use_loader_process`) gets this; a
//! library user or a test loads in its own process, as before.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use apx_capture::Capture;
use apx_capture::handoff::{self, Answer};
use serde::{Deserialize, Serialize};

use super::ebpf::{EbpfSettings, capture_config};
use super::fingerprint::FingerprintKey;

/// Loading and verifying takes 0.5–2.5 s here; a loader silent for this
/// long is taken as hung (it is killed, and the gateway loads itself).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The command that runs the loader: a program and its arguments.
struct LoaderCommand {
    program: PathBuf,
    args: Vec<OsString>,
}

static LOADER: OnceLock<LoaderCommand> = OnceLock::new();

/// Has eBPF capture loaded by running `program args…`, which must end up
/// in [`serve_loader_request`] (the `apx` binary: itself, with a hidden
/// subcommand). Set once, before the gateway starts.
pub fn use_loader_process(program: PathBuf, args: Vec<OsString>) {
    let _ = LOADER.set(LoaderCommand { program, args });
}

/// Why the loader process gave no capture.
#[derive(Debug)]
pub enum LoaderError {
    /// It ran and the kernel refused (loading here would fail the same way).
    Refused(String),
    /// It could not be run, or gave no answer.
    Unavailable(String),
}

/// What the gateway asks the loader to load.
#[derive(Serialize, Deserialize)]
struct LoadRequest {
    /// The gateway's pid: whose connections the programs capture.
    tgid: u32,
    listener_fd: u32,
    listener_port: u16,
    /// Hex; the socket is private to the two processes.
    fingerprint_key: String,
    extra_headers: Vec<String>,
}

/// Loads through the loader process; `None` when no loader is registered.
pub(super) fn load(settings: &EbpfSettings) -> Option<Result<Capture, LoaderError>> {
    let command = LOADER.get()?;
    Some(load_with(command, settings))
}

fn load_with(command: &LoaderCommand, settings: &EbpfSettings) -> Result<Capture, LoaderError> {
    let unavailable = |what: &str, err: &dyn std::fmt::Display| {
        LoaderError::Unavailable(format!("{what}: {err}"))
    };
    let request = LoadRequest {
        tgid: std::process::id(),
        listener_fd: settings.listener_fd,
        listener_port: settings.listener_port,
        fingerprint_key: hex::encode(settings.fingerprint_key.bytes()),
        extra_headers: settings.extra_headers.clone(),
    };
    let request = serde_json::to_vec(&request).map_err(|e| unavailable("request", &e))?;
    let (ours, theirs) = handoff::socket_pair().map_err(|e| unavailable("socket", &e))?;
    let mut child = Command::new(&command.program)
        .args(&command.args)
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| unavailable(&command.program.display().to_string(), &e))?;
    let answer = handoff::send_bytes(ours.as_fd(), &request)
        .and_then(|()| handoff::receive(ours.as_fd(), ANSWER_TIMEOUT));
    let result = match answer {
        Ok(Answer::Loaded(capture)) => Ok(*capture),
        Ok(Answer::Failed(reason)) => Err(LoaderError::Refused(reason)),
        Err(err) => {
            let _ = child.kill();
            Err(LoaderError::Unavailable(err.0))
        }
    };
    let _ = child.wait();
    result
}

/// The loader process's side: reads the request from stdin (a socket from
/// [`load`]), loads and attaches, answers. Returns the process exit code.
pub fn serve_loader_request() -> i32 {
    // SAFETY: fd 0 is open for the life of the process; the borrow ends
    // before it returns.
    let socket = unsafe { BorrowedFd::borrow_raw(0) };
    let answered = match load_requested(socket) {
        Ok(capture) => handoff::send(capture, socket),
        Err(reason) => handoff::send_failure(socket, &reason),
    };
    match answered {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("apx eBPF loader: {err}");
            1
        }
    }
}

fn load_requested(socket: BorrowedFd<'_>) -> Result<Capture, String> {
    let bytes = handoff::receive_bytes(socket, ANSWER_TIMEOUT).map_err(|e| e.0)?;
    let request: LoadRequest =
        serde_json::from_slice(&bytes).map_err(|e| format!("bad load request: {e}"))?;
    let key = unhex(&request.fingerprint_key).ok_or("bad fingerprint key in the load request")?;
    let settings = EbpfSettings {
        listener_fd: request.listener_fd,
        listener_port: request.listener_port,
        fingerprint_key: FingerprintKey::from_bytes(key),
        extra_headers: request.extra_headers,
    };
    let config = capture_config(&settings, request.tgid)?;
    Capture::start(&config).map_err(|err| err.0)
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cross_as_hex() {
        let key: [u8; 16] = std::array::from_fn(|i| (i * 17) as u8);
        assert_eq!(unhex(&hex::encode(key)), Some(key));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(32)), None);
    }

    /// A loader that is not one (it exits without answering) makes the
    /// gateway load by itself, not wait or fail.
    #[test]
    fn a_loader_that_does_not_answer_is_unavailable() {
        let command = LoaderCommand {
            program: PathBuf::from("/bin/true"),
            args: Vec::new(),
        };
        let settings = EbpfSettings {
            listener_fd: 3,
            listener_port: 1,
            fingerprint_key: FingerprintKey::from_bytes([7; 16]),
            extra_headers: Vec::new(),
        };
        match load_with(&command, &settings) {
            Err(LoaderError::Unavailable(_)) => {}
            Err(LoaderError::Refused(why)) => panic!("refused: {why}"),
            Ok(_) => panic!("/bin/true loaded eBPF programs"),
        }
    }
}
