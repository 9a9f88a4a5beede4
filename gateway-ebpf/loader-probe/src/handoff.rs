//! Handing a started capture from the process that loaded it to another.
//!
//! Loading parses the kernel's BTF (aya's `EbpfLoader::new` does it
//! eagerly: ≈ 13 MB of heap for a 5.4 MB `/sys/kernel/btf/vmlinux`, and the
//! socket layer's attach needs it again). Freed or not, that stays in the
//! peak memory of the process that did it. So the gateway can have a
//! short-lived loader process load and attach the programs, send every fd
//! it holds (programs, links, perf events, maps) over a Unix socket and
//! exit: the gateway keeps those fds open, which keeps the programs
//! attached, and reads the ring buffer and the counters through them.
//!
//! On the wire (a `SOCK_SEQPACKET` socket, so each message arrives whole),
//! loader to receiver: a header, then the fds, at most `FDS_PER_MESSAGE` a
//! message, each message's payload their count (u32 LE). The header is
//! `MAGIC`, a status byte, then
//! * ready (0): layer (1 sockets, 2 syscalls), load and attach time in µs
//!   (u64 LE each), fd count, index of the ring buffer's fd and of the
//!   counters' fd among them (u32 LE each);
//! * failed (1): the reason, UTF-8.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray, RingBuf};

use crate::{Capture, Error, HookLayer};

const MAGIC: &[u8; 8] = b"APXCAP1\0";
const STATUS_READY: u8 = 0;
const STATUS_FAILED: u8 = 1;
const READY_LEN: usize = 8 + 1 + 1 + 8 + 8 + 4 + 4 + 4;
/// Below the kernel's `SCM_MAX_FD` (253) per message.
const FDS_PER_MESSAGE: usize = 200;
/// Most fds a receiver accepts from one loader.
const MAX_FDS: usize = 4096;
/// Largest message either side sends (a failure reason is cut to fit).
const MAX_MESSAGE: usize = 4096;

/// Sends `capture` over `socket` and forgets it here: its programs stay
/// attached for as long as the receiver keeps the fds, whatever this
/// process does next (it should exit).
pub fn send(capture: Capture, socket: BorrowedFd<'_>) -> Result<(), Error> {
    let fds = open_fds(socket.as_raw_fd())?;
    let index_of = |fd: RawFd| -> Result<u32, Error> {
        fds.iter()
            .position(|f| *f == fd)
            .map(|i| i as u32)
            .ok_or_else(|| Error(format!("fd {fd} is not among this process's fds")))
    };
    let ring = index_of(capture.ring.as_raw_fd())?;
    let stats = index_of(capture.stats_fd)?;
    let mut header = Vec::with_capacity(READY_LEN);
    header.extend_from_slice(MAGIC);
    header.push(STATUS_READY);
    header.push(match capture.layer {
        HookLayer::Syscalls => 2,
        HookLayer::Sockets | HookLayer::Auto => 1,
    });
    header.extend_from_slice(&micros(capture.load_time).to_le_bytes());
    header.extend_from_slice(&micros(capture.attach_time).to_le_bytes());
    header.extend_from_slice(&(fds.len() as u32).to_le_bytes());
    header.extend_from_slice(&ring.to_le_bytes());
    header.extend_from_slice(&stats.to_le_bytes());
    send_message(socket, &header, &[])?;
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        send_message(socket, &(chunk.len() as u32).to_le_bytes(), chunk)?;
    }
    // Dropping it would detach the programs (aya detaches what it attached);
    // this process's fds close when it exits, the receiver's stay.
    std::mem::forget(capture);
    Ok(())
}

/// Tells the receiver that loading failed, and why.
pub fn send_failure(socket: BorrowedFd<'_>, reason: &str) -> Result<(), Error> {
    let mut message = Vec::with_capacity(MAX_MESSAGE);
    message.extend_from_slice(MAGIC);
    message.push(STATUS_FAILED);
    let mut end = reason.len().min(MAX_MESSAGE - message.len());
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    message.extend_from_slice(&reason.as_bytes()[..end]);
    send_message(socket, &message, &[])
}

/// What a loader process answered.
pub enum Answer {
    Loaded(Box<Capture>),
    /// Loading failed there, for this reason (sent with [`send_failure`]).
    Failed(String),
}

/// Receives what a loader sent with [`send`] or [`send_failure`]. An error
/// is a loader that did not answer (ended, hung past `timeout` for a
/// message) or answered wrong.
pub fn receive(socket: BorrowedFd<'_>, timeout: Duration) -> Result<Answer, Error> {
    set_receive_timeout(socket, timeout)?;
    let (header, _) = receive_message(socket)?;
    if header.len() < MAGIC.len() + 1 || &header[..MAGIC.len()] != MAGIC {
        return Err(Error("the eBPF loader process sent no valid answer".into()));
    }
    if header[MAGIC.len()] == STATUS_FAILED {
        let reason = String::from_utf8_lossy(&header[MAGIC.len() + 1..]).into_owned();
        return Ok(Answer::Failed(reason));
    }
    if header[MAGIC.len()] != STATUS_READY || header.len() != READY_LEN {
        return Err(Error(
            "the eBPF loader process sent a malformed header".into(),
        ));
    }
    let mut at = MAGIC.len() + 1;
    let mut take = |n: usize| {
        let bytes = &header[at..at + n];
        at += n;
        bytes
    };
    let layer = match take(1)[0] {
        2 => HookLayer::Syscalls,
        _ => HookLayer::Sockets,
    };
    let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize;
    let load_time = Duration::from_micros(u64_at(take(8)));
    let attach_time = Duration::from_micros(u64_at(take(8)));
    let count = u32_at(take(4));
    let ring_index = u32_at(take(4));
    let stats_index = u32_at(take(4));
    // A loader holds a few dozen fds; anything far beyond is a bad header,
    // not a reason to reserve memory for it.
    if count > MAX_FDS {
        return Err(Error(format!(
            "the eBPF loader process announced {count} fds"
        )));
    }
    if ring_index >= count || stats_index >= count {
        return Err(Error("the eBPF loader process sent bad fd indices".into()));
    }
    let mut kept: Vec<OwnedFd> = Vec::with_capacity(count);
    while kept.len() < count {
        let (payload, fds) = receive_message(socket)?;
        if payload.len() != 4 || u32_at(&payload) != fds.len() || fds.is_empty() {
            return Err(Error(
                "the eBPF loader process sent fewer fds than announced".into(),
            ));
        }
        kept.extend(fds);
    }
    if kept.len() != count {
        return Err(Error(
            "the eBPF loader process sent more fds than announced".into(),
        ));
    }
    let map = |index: usize, what: &str| -> Result<Map, Error> {
        let fd = kept[index]
            .try_clone()
            .map_err(|e| Error(format!("{what}: {e}")))?;
        let data = MapData::from_fd(fd).map_err(|e| Error(format!("{what}: {e}")))?;
        Map::from_map_data(data).map_err(|e| Error(format!("{what}: {e}")))
    };
    let ring = RingBuf::try_from(map(ring_index, "ring buffer")?)
        .map_err(|e| Error(format!("ring buffer: {e}")))?;
    let stats = PerCpuArray::try_from(map(stats_index, "counters")?)
        .map_err(|e| Error(format!("counters: {e}")))?;
    let stats_fd = kept[stats_index].as_raw_fd();
    Ok(Answer::Loaded(Box::new(Capture {
        ebpf: None,
        layer,
        prog_load: Vec::new(),
        ring,
        stats,
        stats_fd,
        _kept: kept,
        spare: None,
        load_time,
        attach_time,
    })))
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec: one
/// end for the loader process (as its stdin, say), one to [`receive`] on.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error(format!(
            "socketpair: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: both were just created and are owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message of at most `MAX_MESSAGE` bytes (what the loader
/// process is asked to load, say).
pub fn send_bytes(socket: BorrowedFd<'_>, bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() > MAX_MESSAGE {
        return Err(Error(format!(
            "a message of {} bytes is too long",
            bytes.len()
        )));
    }
    send_message(socket, bytes, &[])
}

/// Receives one message sent with [`send_bytes`].
pub fn receive_bytes(socket: BorrowedFd<'_>, timeout: Duration) -> Result<Vec<u8>, Error> {
    set_receive_timeout(socket, timeout)?;
    Ok(receive_message(socket)?.0)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// This process's open fds above stderr, except `socket`.
fn open_fds(socket: RawFd) -> Result<Vec<RawFd>, Error> {
    let listing =
        std::fs::read_dir("/proc/self/fd").map_err(|e| Error(format!("/proc/self/fd: {e}")))?;
    let mut fds: Vec<RawFd> = listing
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != socket)
        .collect();
    // The listing's own fd was among them, and is closed now.
    // SAFETY: F_GETFD reads flags of an fd number; a closed one gives -1.
    fds.retain(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1);
    fds.sort_unstable();
    Ok(fds)
}

fn set_receive_timeout(socket: BorrowedFd<'_>, timeout: Duration) -> Result<(), Error> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: `tv` is a valid timeval for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error(format!(
            "setting a timeout on the loader socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Control-message room for `FDS_PER_MESSAGE` fds, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer([u8; 1024]);

const _: () = assert!(FDS_PER_MESSAGE * size_of::<RawFd>() + 64 <= 1024);

fn send_message(socket: BorrowedFd<'_>, payload: &[u8], fds: &[RawFd]) -> Result<(), Error> {
    let mut control = ControlBuffer([0; 1024]);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data_len = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the buffer holds
        // CMSG_SPACE(data_len) bytes (asserted above for the largest
        // message), so the first header and its data fit in it.
        unsafe {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                data_len as usize,
            );
        }
    }
    // SAFETY: `msg` points at `iov` and `control`, both alive for the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 || sent as usize != payload.len() {
        return Err(Error(format!(
            "sending to the eBPF capture's receiver: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn receive_message(socket: BorrowedFd<'_>) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
    let mut payload = vec![0u8; MAX_MESSAGE];
    let mut control = ControlBuffer([0; 1024]);
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: `msg` points at `iov` and `control`, both alive for the call.
    let got = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(Error(format!(
            "waiting for the eBPF loader process: {}",
            std::io::Error::last_os_error()
        )));
    }
    if got == 0 {
        return Err(Error(
            "the eBPF loader process ended without an answer".into(),
        ));
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with `msg_controllen` bytes of
    // well-formed control messages; SCM_RIGHTS data is an array of fds
    // that are now this process's, each owned here exactly once.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let bytes = (*header).cmsg_len as usize - (data as usize - header as usize);
                for i in 0..bytes / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(Error(
            "the eBPF loader process sent more fds than fit".into(),
        ));
    }
    payload.truncate(got as usize);
    Ok((payload, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socket_pair().unwrap()
    }

    #[test]
    fn fds_and_payloads_cross_whole() {
        let (a, b) = pair();
        let files: Vec<std::fs::File> = (0..250)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        for chunk in raw.chunks(FDS_PER_MESSAGE) {
            send_message(a.as_fd(), &(chunk.len() as u32).to_le_bytes(), chunk).unwrap();
        }
        set_receive_timeout(b.as_fd(), Duration::from_secs(5)).unwrap();
        let (first, fds1) = receive_message(b.as_fd()).unwrap();
        let (second, fds2) = receive_message(b.as_fd()).unwrap();
        assert_eq!(first, 200u32.to_le_bytes());
        assert_eq!(second, 50u32.to_le_bytes());
        assert_eq!(fds1.len() + fds2.len(), 250);
        // Each received fd is a new fd for the same open file.
        for fd in fds1.iter().chain(&fds2) {
            assert!(!raw.contains(&fd.as_raw_fd()));
            let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            assert!(target.to_string_lossy().ends_with("/stat"), "{target:?}");
        }
    }

    #[test]
    fn a_failure_arrives_as_the_error() {
        let (a, b) = pair();
        send_failure(a.as_fd(), "verifier said no").unwrap();
        match receive(b.as_fd(), Duration::from_secs(5)) {
            Ok(Answer::Failed(reason)) => assert_eq!(reason, "verifier said no"),
            _ => panic!("not the failure sent"),
        }
    }

    #[test]
    fn a_loader_that_ends_silently_is_an_error_not_a_hang() {
        let (a, b) = pair();
        drop(a);
        let err = receive(b.as_fd(), Duration::from_secs(5)).err().unwrap();
        assert!(err.0.contains("ended without an answer"), "{}", err.0);
        let (_c, d) = pair();
        let started = std::time::Instant::now();
        let err = receive(d.as_fd(), Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "{}", err.0);
    }
}
