//! Probes of what the kernel lets this process do with eBPF: create a map,
//! load a (trivial) tracepoint program, and attach it to the
//! `syscalls/sys_enter_write` tracepoint, the kind of hook request capture
//! uses (syscall tracepoints on accept, read, write, …). Each step is done
//! for real and undone at once: the program returns 0 and is detached when
//! its file descriptors close at the end of the probe.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IOW('$', 8, __u32)`
const PERF_EVENT_IOC_SET_BPF: libc::Ioctl = 0x4004_2408;
/// `_IO('$', 0)`
const PERF_EVENT_IOC_ENABLE: libc::Ioctl = 0x2400;
/// `PERF_ATTR_SIZE_VER1`: up to and including `config2`.
const PERF_ATTR_SIZE: usize = 72;
pub const TRACEPOINT: &str = "syscalls/sys_enter_write";
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// What each step gave.
#[derive(Debug, Clone)]
pub struct Probe {
    pub map: Result<(), String>,
    pub load: Result<(), String>,
    pub attach: Result<(), String>,
}

/// `union bpf_attr`, as raw bytes: every command here only uses the first
/// few fields, and the kernel requires the unused rest to be zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }

    fn put_u32(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn put_u64(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn errno_text(context: &str) -> String {
    let err = std::io::Error::last_os_error();
    let hint = match err.raw_os_error() {
        Some(libc::EPERM) => " (not permitted: needs root or CAP_BPF + CAP_PERFMON)",
        Some(libc::ENOSYS) => " (the kernel has no bpf() syscall)",
        Some(libc::EINVAL) => " (the kernel rejected the request)",
        Some(libc::ENOENT) => " (the hook does not exist in this kernel)",
        Some(libc::EACCES) => " (denied: a security policy blocks it)",
        _ => "",
    };
    format!("{context}: {err}{hint}")
}

fn bpf(command: libc::c_long, attr: &mut Attr) -> Result<OwnedFd, ()> {
    // SAFETY: `attr` is a valid, writable 128-byte buffer that outlives the
    // call, and its size is passed alongside it, as bpf(2) requires.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(());
    }
    // SAFETY: a non-negative return of these bpf commands is a new file
    // descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `LINUX_VERSION_CODE` for `release` ("6.1.0-18-amd64" → 6.1.0), needed
/// by tracing programs on kernels before 5.0.
pub fn version_code(release: &str) -> u32 {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0).min(255);
    (major << 16) | (minor << 8) | patch
}

fn create_map() -> Result<OwnedFd, String> {
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_MAP_TYPE_ARRAY);
    attr.put_u32(4, 4); // key_size
    attr.put_u32(8, 8); // value_size
    attr.put_u32(12, 1); // max_entries
    bpf(BPF_MAP_CREATE, &mut attr).map_err(|()| errno_text("BPF_MAP_CREATE"))
}

fn load_program(kernel_release: &str) -> Result<OwnedFd, String> {
    // r0 = 0; exit
    let insns: [u64; 2] = [
        u64::from_ne_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
        u64::from_ne_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = Attr::new();
    attr.put_u32(0, BPF_PROG_TYPE_TRACEPOINT);
    attr.put_u32(4, insns.len() as u32);
    attr.put_u64(8, insns.as_ptr() as u64);
    attr.put_u64(16, license.as_ptr() as u64);
    attr.put_u32(24, 1); // log_level
    attr.put_u32(28, log.len() as u32);
    attr.put_u64(32, log.as_mut_ptr() as u64);
    attr.put_u32(40, version_code(kernel_release));
    let name = b"apx_doctor";
    attr.0[48..48 + name.len()].copy_from_slice(name);
    // `insns`, `license` and `log` live until the end of this function,
    // past the syscall that reads them.
    bpf(BPF_PROG_LOAD, &mut attr).map_err(|()| {
        let verifier = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let mut text = errno_text("BPF_PROG_LOAD (tracepoint)");
        if !verifier.is_empty() {
            text.push_str(&format!("; verifier: {verifier}"));
        }
        text
    })
}

/// The id of a tracepoint, from tracefs.
fn tracepoint_id() -> Result<u64, String> {
    let mut tried = Vec::new();
    for root in TRACEFS_ROOTS {
        let path = format!("{root}/events/{TRACEPOINT}/id");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return text
                    .trim()
                    .parse()
                    .map_err(|_| format!("{path} does not hold a number"));
            }
            Err(err) => tried.push(format!("{path}: {err}")),
        }
    }
    Err(format!(
        "cannot find the {TRACEPOINT} tracepoint (is tracefs mounted? does the kernel have CONFIG_FTRACE_SYSCALLS?): {}",
        tried.join("; ")
    ))
}

fn attach_tracepoint(program: &OwnedFd) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let id = tracepoint_id()?;
    let mut attr = [0u8; PERF_ATTR_SIZE];
    attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&(PERF_ATTR_SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&id.to_ne_bytes()); // config: the tracepoint id
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
    attr[48..52].copy_from_slice(&1u32.to_ne_bytes()); // wakeup_events
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares,
    // alive for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno_text(&format!("perf_event_open ({TRACEPOINT})")));
    }
    // SAFETY: a non-negative perf_event_open return is a new, unowned fd.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: both ioctls take an int argument (the program fd, or none)
    // on the perf event fd we own.
    let set = unsafe {
        libc::ioctl(
            event.as_raw_fd(),
            PERF_EVENT_IOC_SET_BPF,
            program.as_raw_fd(),
        )
    };
    if set < 0 {
        return Err(errno_text("PERF_EVENT_IOC_SET_BPF"));
    }
    // SAFETY: as above.
    let enable = unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) };
    if enable < 0 {
        return Err(errno_text("PERF_EVENT_IOC_ENABLE"));
    }
    // Closing `event` and `program` detaches and unloads it.
    Ok(())
}

/// Runs the three steps; later steps are skipped once one fails.
pub fn probe(kernel_release: &str) -> Probe {
    let map = create_map().map(drop);
    let program = load_program(kernel_release);
    let load = program.as_ref().map(|_| ()).map_err(Clone::clone);
    let attach = match &program {
        Ok(program) => attach_tracepoint(program),
        Err(_) => Err("skipped: the program did not load".to_string()),
    };
    Probe { map, load, attach }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_codes() {
        assert_eq!(version_code("6.18.0"), (6 << 16) | (18 << 8));
        assert_eq!(
            version_code("5.10.300-generic"),
            (5 << 16) | (10 << 8) | 255
        );
        assert_eq!(version_code("4.19"), (4 << 16) | (19 << 8));
    }

    #[test]
    fn probing_never_panics() {
        // Whatever this machine allows, the probe reports instead of failing.
        let probe = probe("6.0.0");
        if probe.load.is_err() {
            assert!(probe.attach.is_err());
        }
    }
}
