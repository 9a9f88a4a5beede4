//! Running the gateway in the background: under systemd when systemd is the
//! running init and `apx init` installed the unit, otherwise as a managed
//! daemon (its own session, a pidfile and a log file in the state directory).

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::envfile::EnvVars;
use crate::paths;

pub const UNIT_NAME: &str = "apx.service";

/// Rotate the daemon log beyond this size, at start.
const LOG_ROTATE_BYTES: u64 = 16 << 20;

/// Who runs the gateway for a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manager {
    /// systemd, through the unit `apx init` installed (a system unit as
    /// root, a user unit otherwise).
    Systemd { system: bool, unit: PathBuf },
    /// A daemon `apx start` forks itself.
    Managed,
}

impl Manager {
    pub fn name(&self) -> &'static str {
        match self {
            Manager::Systemd { system: true, .. } => "systemd",
            Manager::Systemd { system: false, .. } => "systemd (user)",
            Manager::Managed => "managed daemon",
        }
    }
}

/// Whether systemd is the running init (the test `sd_booted()` makes).
/// `APX_SYSTEMD=0` or `=1` overrides the detection.
pub fn systemd_is_init() -> bool {
    match std::env::var("APX_SYSTEMD").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => Path::new("/run/systemd/system").is_dir(),
    }
}

/// Whether systemd can run the gateway for this user: as root, systemd is
/// the init; otherwise the user's own systemd instance must be running too
/// (it is in a login session, not in `su` shells or containers).
pub fn systemd_usable() -> bool {
    if !systemd_is_init() {
        return false;
    }
    if paths::is_root() || std::env::var("APX_SYSTEMD").as_deref() == Ok("1") {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|dir| !dir.is_empty())
        .is_some_and(|dir| Path::new(&dir).join("systemd/private").exists())
}

/// The manager for `config`: systemd when it is usable and its installed
/// unit runs this very config, else the managed daemon.
pub fn manager_for(config: &Path) -> Manager {
    if !systemd_usable() {
        return Manager::Managed;
    }
    let system = paths::is_root();
    let Some(unit) = paths::systemd_unit_path(system) else {
        return Manager::Managed;
    };
    match std::fs::read_to_string(&unit) {
        Ok(text) if unit_runs_config(&text, config) => Manager::Systemd { system, unit },
        _ => Manager::Managed,
    }
}

fn unit_runs_config(unit: &str, config: &Path) -> bool {
    let wanted = config.to_string_lossy();
    unit.lines()
        .filter_map(|line| line.strip_prefix("ExecStart="))
        .any(|exec| {
            exec.split("--config")
                .nth(1)
                .map(|rest| rest.trim().trim_matches('"').replace("%%", "%"))
                .is_some_and(|path| path == wanted)
        })
}

/// Runs `systemctl [--user] ARGS`, returning its stdout, or its stderr as the error.
pub fn systemctl(system: bool, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new("systemctl");
    if !system {
        command.arg("--user");
    }
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run systemctl")?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        anyhow::bail!("systemctl {} failed: {stderr}", args.join(" "))
    }
}

/// The main pid of the unit, when it runs.
pub fn systemd_main_pid(system: bool) -> Option<i32> {
    systemctl(
        system,
        &["show", "--property", "MainPID", "--value", UNIT_NAME],
    )
    .ok()?
    .parse::<i32>()
    .ok()
    .filter(|&pid| pid > 0)
}

/// The last lines the unit logged.
pub fn journal_tail(system: bool, lines: usize) -> String {
    let mut command = Command::new("journalctl");
    if system {
        command.args(["-u", UNIT_NAME]);
    } else {
        command.args(["--user-unit", UNIT_NAME]);
    }
    command
        .args(["-n", &lines.to_string(), "--no-pager", "--output", "cat"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The managed daemon of one state directory.
#[derive(Clone, Debug)]
pub struct Daemon {
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn of(state_dir: &Path) -> Daemon {
        Daemon {
            pidfile: paths::pidfile(state_dir),
            log: paths::daemon_log(state_dir),
        }
    }

    /// The pid of the running daemon. A pidfile naming a dead process, or a
    /// process that is not `apx serve` (the pid was reused), is stale.
    pub fn running(&self) -> Option<i32> {
        let text = std::fs::read_to_string(&self.pidfile).ok()?;
        let pid = text.trim().parse::<i32>().ok().filter(|&p| p > 0)?;
        (is_alive(pid) && is_apx_serve(pid)).then_some(pid)
    }

    /// Removes a stale pidfile, if any.
    pub fn clear_stale(&self) {
        if self.pidfile.exists() && self.running().is_none() {
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }

    /// Starts `exe serve --config CONFIG` in a new session, detached from
    /// the terminal, with `env` added to its environment and its output
    /// appended to the log file; writes the pidfile.
    pub fn spawn(&self, exe: &Path, config: &Path, env: &EnvVars) -> anyhow::Result<Child> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        }
        self.rotate_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.log)
            .with_context(|| format!("cannot open the log file {}", self.log.display()))?;
        let log_err = log
            .try_clone()
            .context("cannot duplicate the log file handle")?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--pidfile")
            .arg(&self.pidfile)
            .envs(env)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .current_dir("/");
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid(2), which is async-signal-safe; it touches no memory
        // shared with the parent.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        paths::write_atomic(&self.pidfile, format!("{}\n", child.id()).as_bytes(), 0o644)?;
        Ok(child)
    }

    fn rotate_log(&self) {
        let big = std::fs::metadata(&self.log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES);
        if big {
            let mut old = self.log.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.log, old);
        }
    }

    /// The last `lines` lines of the daemon log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file (reads at most the last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 << 10);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether `pid` is a live process (not a zombie).
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces or parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn is_apx_serve(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| cmdline.split(|&b| b == 0).any(|arg| arg == b"serve"))
        .unwrap_or(false)
}

/// How long `pid` has been running, from /proc.
pub fn process_uptime(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Field 22 (starttime) is the 20th after the command name.
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)?;
    let boot_uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started = start_ticks as f64 / ticks as f64;
    Some(Duration::from_secs_f64((boot_uptime - started).max(0.0)))
}

/// Sends SIGTERM and waits up to `timeout` for the process to exit; then
/// SIGKILL when `force`. Returns whether it had to be killed.
pub fn terminate(pid: i32, timeout: Duration, force: bool) -> anyhow::Result<bool> {
    let target = Pid::from_raw(pid);
    match signal::kill(target, Signal::SIGTERM) {
        Ok(()) => {}
        Err(nix::errno::Errno::ESRCH) => return Ok(false),
        Err(err) => {
            anyhow::bail!(
                "cannot signal the gateway (pid {pid}): {err}; are you the user who started it?"
            )
        }
    }
    if wait_exit(pid, timeout) {
        return Ok(false);
    }
    if !force {
        anyhow::bail!(
            "the gateway (pid {pid}) is still running {}s after SIGTERM; `apx stop --force` kills it",
            timeout.as_secs()
        );
    }
    let _ = signal::kill(target, Signal::SIGKILL);
    if wait_exit(pid, Duration::from_secs(5)) {
        Ok(true)
    } else {
        anyhow::bail!("the gateway (pid {pid}) survived SIGKILL")
    }
}

fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_matched_to_its_config() {
        let unit = "[Service]\nExecStart=/usr/local/bin/apx serve --config /etc/apx/apx.toml\n";
        assert!(unit_runs_config(unit, Path::new("/etc/apx/apx.toml")));
        assert!(!unit_runs_config(
            unit,
            Path::new("/home/a/.config/apx/apx.toml")
        ));
        let quoted = "ExecStart=/bin/apx serve --config \"/srv/100%% x/apx.toml\"\n";
        assert!(unit_runs_config(quoted, Path::new("/srv/100% x/apx.toml")));
    }

    #[test]
    fn managed_when_systemd_is_not_init() {
        // This test only reads the decision; APX_SYSTEMD is not set by tests.
        if !Path::new("/run/systemd/system").is_dir() && std::env::var_os("APX_SYSTEMD").is_none() {
            assert_eq!(
                manager_for(Path::new("/etc/apx/apx.toml")),
                Manager::Managed
            );
        }
    }

    #[test]
    fn this_process_is_alive_and_has_an_uptime() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!is_apx_serve(me) || std::env::args().any(|a| a == "serve"));
        assert!(process_uptime(me).is_some());
        assert!(!is_alive(i32::MAX));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("apx-tail-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 2), "c\nd");
        assert_eq!(tail(&path, 10), "a\nb\nc\nd");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(tail(&path, 2), "");
    }
}
