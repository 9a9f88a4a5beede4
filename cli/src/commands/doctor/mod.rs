//! `apx doctor`: what this machine supports, what is wrong and how to fix
//! it, and the capture mode that follows.

mod bpf;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use apx_gateway::config::CaptureMode;
use serde::Serialize;
use serde_json::json;

use crate::client::Client;
use crate::exit::{self, Failure};
use crate::local::{self, Local};
use crate::ui;

pub const HELP: &str = "Examples:
  apx doctor
  apx doctor --json | jq '.capture'
  apx doctor --fix          # mount tracefs where it is missing (root)

Exit code 1 when any check fails; warnings do not fail.
APX_DOCTOR_BTF_PATH points the BTF check at another file (for testing).";

/// The oldest kernel the capture programs load on (the gateway's own floor).
const MIN_KERNEL: (u32, u32) = apx_gateway::logging::ebpf::MIN_KERNEL;
/// From 5.11, BPF memory is charged to the cgroup, not RLIMIT_MEMLOCK.
const MEMCG_KERNEL: (u32, u32) = (5, 11);
const MIN_MEMLOCK: u64 = 64 << 20;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Fix what can be fixed here (mount tracefs), as root.
    #[arg(long)]
    fix: bool,
    /// Check this file instead of /sys/kernel/btf/vmlinux.
    #[arg(long, env = "APX_DOCTOR_BTF_PATH", value_name = "FILE", hide = true)]
    btf_path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// The capture mode apx will use, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Capture {
    pub mode: &'static str,
    pub reason: String,
}

/// What the kernel checks found, for the capture decision.
#[derive(Default)]
struct Kernel {
    release: String,
    version: Option<(u32, u32)>,
    btf: bool,
    bpf: Option<bool>,
    caps: bool,
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let btf_path = args
        .btf_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys/kernel/btf/vmlinux"));
    let mut checks = Vec::new();
    let mut kernel = Kernel::default();

    checks.push(kernel_check(&mut kernel));
    checks.push(btf_check(&btf_path, &mut kernel));
    checks.push(hooks_check(&btf_path, &kernel));
    checks.push(caps_check(&mut kernel));
    checks.push(bpf_check(&mut kernel));
    checks.push(memlock_check(&kernel));
    checks.push(tracefs_check(args.fix, args.json));
    checks.push(cgroup_check());

    let local = Local::discover(config_path)?;
    let configured = config_checks(&local, &mut checks);
    let capture = capture_decision(&kernel, configured);
    if configured == Some(CaptureMode::Ebpf) && capture.mode != "ebpf" {
        checks.push(
            check("capture", Status::Fail, format!("capture = \"ebpf\" but {}", capture.reason))
                .fix("set `capture = \"auto\"` under [logging] to fall back to user space, or fix the eBPF checks above"),
        );
    }

    let failed = checks.iter().any(|c| c.status == Status::Fail);
    if args.json {
        let report = json!({
            "ok": !failed,
            "config": config_path.display().to_string(),
            "kernel": kernel.release,
            "checks": checks,
            "capture": capture,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(config_path, &kernel, &checks, &capture);
    }
    if failed {
        return Err(Failure::silent(exit::FAILURE).into());
    }
    Ok(())
}

fn print_table(config_path: &Path, kernel: &Kernel, checks: &[Check], capture: &Capture) {
    let arch = std::env::consts::ARCH;
    println!(
        "{} — Linux {} {arch}, config {}\n",
        ui::bold("apx doctor"),
        kernel.release,
        config_path.display()
    );
    for c in checks {
        let mark = match c.status {
            Status::Pass => ui::green("✓ pass"),
            Status::Warn => ui::yellow("! warn"),
            Status::Fail => ui::red("✗ fail"),
        };
        println!(
            "  {} {} {}",
            ui::pad(&mark, 6),
            ui::pad(c.name, 12),
            c.detail
        );
        if let Some(fix) = &c.fix {
            println!(
                "  {}   {} {fix}",
                " ".repeat(6),
                ui::pad(&ui::cyan("fix:"), 12)
            );
        }
    }
    let (pass, warn, fail) = checks
        .iter()
        .fold((0, 0, 0), |(p, w, f), c| match c.status {
            Status::Pass => (p + 1, w, f),
            Status::Warn => (p, w + 1, f),
            Status::Fail => (p, w, f + 1),
        });
    println!(
        "\n{}: {} — {}",
        ui::bold("capture mode"),
        ui::bold(capture.mode),
        capture.reason
    );
    println!("{pass} passed, {warn} warnings, {fail} failed");
}

fn kernel_check(kernel: &mut Kernel) -> Check {
    // The gateway's own reading, so doctor and the loader agree.
    let release = apx_gateway::logging::ebpf::kernel_release();
    kernel.release = release.clone();
    kernel.version = apx_gateway::logging::ebpf::kernel_version(&release);
    match kernel.version {
        Some(v) if v >= MIN_KERNEL => check(
            "kernel",
            Status::Pass,
            format!(
                "{release} (eBPF capture needs {}.{}+)",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        Some(_) => check(
            "kernel",
            Status::Warn,
            format!(
                "{release} is older than {}.{}: requests are captured in user space",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        )
        .fix(format!(
            "upgrade to a {}.{}+ kernel for eBPF capture (user-space capture works as is)",
            MIN_KERNEL.0, MIN_KERNEL.1
        )),
        None => check(
            "kernel",
            Status::Warn,
            format!("cannot read the kernel version `{release}`"),
        ),
    }
}

fn btf_check(path: &Path, kernel: &mut Kernel) -> Check {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && std::fs::File::open(path).is_ok() => {
            kernel.btf = true;
            check(
                "btf",
                Status::Pass,
                format!("{} ({:.1} MiB)", path.display(), meta.len() as f64 / 1048576.0),
            )
        }
        Ok(_) => check("btf", Status::Warn, format!("{} is not a readable file", path.display()))
            .fix("run as root, or use a kernel built with CONFIG_DEBUG_INFO_BTF=y"),
        Err(_) => check(
            "btf",
            Status::Warn,
            format!("{} is missing: eBPF capture needs kernel BTF", path.display()),
        )
        .fix("use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 2020 are); user-space capture works without"),
    }
}

/// Which hook layer eBPF capture will attach: the socket tracepoints
/// (`sock_recv_length`/`sock_send_length`, Linux 6.4+) when the kernel's
/// BTF names them, else the syscall tracepoints.
fn hooks_check(btf_path: &Path, kernel: &Kernel) -> Check {
    if !kernel.btf {
        return check(
            "hooks",
            Status::Warn,
            "not checked: no kernel BTF (see btf)",
        );
    }
    let names_socket_hooks = std::fs::read(btf_path).is_ok_and(|btf| {
        [
            &b"btf_trace_sock_recv_length\0"[..],
            b"btf_trace_sock_send_length\0",
        ]
        .iter()
        .all(|name| btf.windows(name.len()).any(|w| w == *name))
    });
    if names_socket_hooks {
        check(
            "hooks",
            Status::Pass,
            "socket tracepoints (sock_recv_length/sock_send_length): capture costs nothing to other processes' syscalls",
        )
    } else {
        check(
            "hooks",
            Status::Warn,
            "no sock_recv_length/sock_send_length tracepoints (Linux < 6.4): capture uses syscall tracepoints, which put every process's syscalls on the tracing slow path while it runs",
        )
        .fix("a 6.4+ kernel lets capture hook sockets only; user-space capture has no kernel cost at all")
    }
}

/// The effective capability bits of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

fn caps_check(kernel: &mut Kernel) -> Check {
    let root = nix::unistd::geteuid().is_root();
    let caps = effective_caps().unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    let modern = has(CAP_BPF) && has(CAP_PERFMON);
    let legacy = has(CAP_SYS_ADMIN);
    let who = if root { "root" } else { "not root" };
    if modern || legacy {
        kernel.caps = true;
        let which = if modern {
            "CAP_BPF + CAP_PERFMON"
        } else {
            "CAP_SYS_ADMIN"
        };
        check("caps", Status::Pass, format!("{who}, {which} effective"))
    } else {
        check(
            "caps",
            Status::Warn,
            format!("{who}, without CAP_BPF + CAP_PERFMON: requests are captured in user space"),
        )
        .fix("run apx as root (the systemd unit does), or `setcap cap_bpf,cap_perfmon+ep $(command -v apx)`")
    }
}

fn bpf_check(kernel: &mut Kernel) -> Check {
    if !kernel.caps {
        return check(
            "bpf",
            Status::Warn,
            "not tried: needs CAP_BPF + CAP_PERFMON (see caps)",
        );
    }
    let probe = bpf::probe(&kernel.release);
    match (&probe.map, &probe.load, &probe.attach) {
        (Ok(()), Ok(()), Ok(())) => {
            kernel.bpf = Some(true);
            check(
                "bpf",
                Status::Pass,
                format!(
                    "map created, program loaded and attached to the {} tracepoint",
                    bpf::TRACEPOINT
                ),
            )
        }
        _ => {
            kernel.bpf = Some(false);
            let first = [&probe.map, &probe.load, &probe.attach]
                .into_iter()
                .find_map(|r| r.as_ref().err())
                .cloned()
                .unwrap_or_default();
            check("bpf", Status::Warn, format!("{first}: requests are captured in user space"))
                .fix("the kernel needs CONFIG_BPF_SYSCALL, CONFIG_BPF_EVENTS and CONFIG_FTRACE_SYSCALLS, tracefs mounted, and no LSM or seccomp policy blocking bpf()")
        }
    }
}

fn memlock_check(kernel: &Kernel) -> Check {
    use nix::sys::resource::{Resource, getrlimit};
    if kernel.version.is_some_and(|v| v >= MEMCG_KERNEL) {
        return check(
            "memlock",
            Status::Pass,
            "not needed: this kernel charges BPF memory to the cgroup",
        );
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == libc::RLIM_INFINITY => {
            check("memlock", Status::Pass, "unlimited")
        }
        Ok((soft, _)) if soft >= MIN_MEMLOCK => {
            check("memlock", Status::Pass, format!("{} MiB", soft >> 20))
        }
        Ok((soft, _)) => check(
            "memlock",
            Status::Warn,
            format!("{} KiB is too little for eBPF maps on this kernel", soft >> 10),
        )
        .fix("`ulimit -l unlimited` before `apx start` (the systemd unit sets LimitMEMLOCK=infinity)"),
        Err(err) => check("memlock", Status::Warn, format!("cannot read RLIMIT_MEMLOCK: {err}")),
    }
}

fn tracefs_mount() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "tracefs").then(|| point.to_string())
    })
}

fn tracefs_check(fix: bool, json: bool) -> Check {
    if let Some(point) = tracefs_mount() {
        return check("tracefs", Status::Pass, format!("mounted at {point}"));
    }
    let target = "/sys/kernel/tracing";
    let root = nix::unistd::geteuid().is_root();
    let ask = !json && !fix && root && ui::stdin_is_tty();
    let wanted = fix
        || (ask
            && dialoguer::Confirm::new()
                .with_prompt(format!("tracefs is not mounted. Mount it at {target} now?"))
                .default(true)
                .interact()
                .unwrap_or(false));
    if wanted && root {
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tracefs", "nodev", target])
            .status()
            .is_ok_and(|s| s.success());
        if mounted && tracefs_mount().is_some() {
            return check(
                "tracefs",
                Status::Pass,
                format!("mounted at {target} (just now)"),
            );
        }
    }
    check(
        "tracefs",
        Status::Warn,
        "not mounted: kernel trace events are not reachable",
    )
    .fix(format!(
        "`mount -t tracefs nodev {target}` as root, or `apx doctor --fix`"
    ))
}

fn cgroup_check() -> Check {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        check(
            "cgroup",
            Status::Pass,
            "cgroup v2 (unified) at /sys/fs/cgroup",
        )
    } else {
        check(
            "cgroup",
            Status::Warn,
            "cgroup v2 is not mounted at /sys/fs/cgroup: records cannot name the client's cgroup",
        )
        .fix("boot with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 at /sys/fs/cgroup")
    }
}

/// The config, credentials and port checks; returns the configured capture mode.
fn config_checks(local: &Local, checks: &mut Vec<Check>) -> Option<CaptureMode> {
    let path = local.config_path().display().to_string();
    if local.text.is_none() {
        checks.push(
            check("config", Status::Warn, format!("no config at {path} yet"))
                .fix("`apx init` writes one"),
        );
        checks.push(port_check(apx_gateway::config::DEFAULT_LISTEN.parse().ok()));
        return None;
    }
    let config = match local.config_lenient() {
        Ok(config) => config,
        Err(err) => {
            let text = format!("{err:#}");
            let first = text.lines().next().unwrap_or_default().to_string();
            checks.push(check("config", Status::Fail, first).fix(format!(
                "edit {path} (`apx check` shows the offending line), or `apx init --force`"
            )));
            return None;
        }
    };
    checks.push(check(
        "config",
        Status::Pass,
        format!(
            "{path}: {} providers, {} models",
            config.providers.len(),
            config.models.len()
        ),
    ));
    checks.push(credentials_check(local));
    checks.push(port_check(Some(config.listen)));
    Some(config.logging.capture)
}

/// The `${NAME}` references in provider `api_key`s.
fn key_references(text: &str) -> Vec<(String, String)> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Vec::new();
    };
    let mut refs = Vec::new();
    let providers = table.get("providers").and_then(toml::Value::as_table);
    for (name, provider) in providers.into_iter().flatten() {
        let Some(key) = provider.get("api_key").and_then(toml::Value::as_str) else {
            continue;
        };
        let mut rest = key;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else { break };
            refs.push((name.clone(), after[..end].to_string()));
            rest = &after[end + 1..];
        }
    }
    refs
}

fn credentials_check(local: &Local) -> Check {
    let refs = key_references(local.text.as_deref().unwrap_or_default());
    if refs.is_empty() {
        return check("credentials", Status::Pass, "no upstream keys needed");
    }
    if let Err(err) = local.env_strict() {
        return check("credentials", Status::Fail, format!("{err:#}"))
            .fix("run as the user that owns the config (root for /etc/apx)");
    }
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (provider, var) in &refs {
        let from = if local.env.contains_key(var) {
            Some("apx.env")
        } else if std::env::var_os(var).is_some() {
            Some("environment")
        } else {
            None
        };
        match from {
            Some(from) => found.push(format!("{var} ({from})")),
            None => missing.push(format!("{var} for {provider}")),
        }
    }
    if missing.is_empty() {
        check("credentials", Status::Pass, found.join(", "))
    } else {
        check(
            "credentials",
            Status::Fail,
            format!("not set: {}", missing.join(", ")),
        )
        .fix(format!(
            "add NAME=\"value\" lines to {} (mode 0600), or export them before `apx start`",
            local.files.env.display()
        ))
    }
}

fn port_check(listen: Option<std::net::SocketAddr>) -> Check {
    let Some(listen) = listen else {
        return check("port", Status::Warn, "no listen address to check");
    };
    let client = Client::new(local::connect_addr(listen), None);
    let healthy = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(700), client.get_json("/healthz")).await
            })
            .ok()
        })
        .is_some_and(|answer| answer.is_ok_and(|(status, _)| status.is_success()));
    if healthy {
        return check(
            "port",
            Status::Pass,
            format!("the gateway is running and healthy on {listen}"),
        );
    }
    match TcpListener::bind(listen) {
        Ok(_) => check("port", Status::Pass, format!("{listen} is free")),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => check(
            "port",
            Status::Fail,
            format!("{listen} is in use by another program"),
        )
        .fix("stop that program, or choose another port (`listen` in the config, or `apx init --force --port N`)"),
        Err(err) => check("port", Status::Fail, format!("cannot listen on {listen}: {err}"))
            .fix("ports below 1024 need root; choose a higher port"),
    }
}

fn capture_decision(kernel: &Kernel, configured: Option<CaptureMode>) -> Capture {
    let mut missing = Vec::new();
    match kernel.version {
        Some(v) if v >= MIN_KERNEL => {}
        _ => missing.push(format!(
            "kernel {} is older than {}.{}",
            kernel.release, MIN_KERNEL.0, MIN_KERNEL.1
        )),
    }
    if !kernel.btf {
        missing.push("no kernel BTF".to_string());
    }
    if !kernel.caps {
        missing.push("no CAP_BPF + CAP_PERFMON".to_string());
    }
    if kernel.bpf == Some(false) {
        missing.push("bpf() programs cannot be loaded or attached".to_string());
    }
    let ebpf_ok = missing.is_empty();
    let why_ebpf = format!(
        "kernel {} with BTF, bpf() programs load and attach, capabilities present",
        kernel.release
    );
    match configured {
        Some(CaptureMode::Off) => Capture {
            mode: "off",
            reason: "`capture = \"off\"` in the config: no request records".to_string(),
        },
        Some(CaptureMode::Userspace) => Capture {
            mode: "userspace",
            reason: "`capture = \"userspace\"` in the config".to_string(),
        },
        _ if ebpf_ok => Capture {
            mode: "ebpf",
            reason: why_ebpf,
        },
        _ => Capture {
            mode: "userspace",
            reason: format!("eBPF is not usable here: {}", missing.join("; ")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_references_are_found() {
        let text = "[providers.openai]\nkind = \"openai\"\nbase_url = \"https://x\"\napi_key = \"${OPENAI_API_KEY}\"\n[providers.local]\nkind = \"openai\"\nbase_url = \"http://y\"\n";
        assert_eq!(
            key_references(text),
            vec![("openai".to_string(), "OPENAI_API_KEY".to_string())]
        );
    }

    #[test]
    fn capture_follows_the_checks() {
        let good = Kernel {
            release: "6.18.0".to_string(),
            version: Some((6, 18)),
            btf: true,
            bpf: Some(true),
            caps: true,
        };
        assert_eq!(
            capture_decision(&good, Some(CaptureMode::Auto)).mode,
            "ebpf"
        );
        assert_eq!(capture_decision(&good, Some(CaptureMode::Off)).mode, "off");
        assert_eq!(
            capture_decision(&good, Some(CaptureMode::Userspace)).mode,
            "userspace"
        );
        let no_btf = Kernel { btf: false, ..good };
        let decision = capture_decision(&no_btf, Some(CaptureMode::Auto));
        assert_eq!(decision.mode, "userspace");
        assert!(decision.reason.contains("BTF"), "{}", decision.reason);
        let old = Kernel {
            release: "4.19.0".to_string(),
            version: Some((4, 19)),
            btf: true,
            ..no_btf
        };
        assert!(
            capture_decision(&old, None)
                .reason
                .contains("older than 5.17")
        );
    }
}
