//! Helpers for the CLI's integration tests: an isolated home (config, state
//! dir, free port) per test, running `apx` in it, and the mock upstream.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[path = "../../../gateway/tests/common/ebpf_gate.rs"]
pub mod ebpf_gate;

pub const OPENAI_KEY: &str = "sk-upstream-openai-test";
pub const ANTHROPIC_KEY: &str = "sk-ant-upstream-test";

pub fn apx_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_apx"))
}

/// A free TCP port on 127.0.0.1 (free when asked; tests use it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One isolated installation: its own HOME, config, state dir and port.
/// Dropping it stops any gateway it started and removes its files.
pub struct Home {
    pub root: PathBuf,
    pub port: u16,
}

impl Home {
    pub fn new(name: &str) -> Home {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("apx-cli-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("home")).unwrap();
        Home {
            root,
            port: free_port(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("etc/apx.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join("etc").join(name)
    }

    /// `apx ARGS` in this home, with a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(apx_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("APX_CONFIG", self.config())
            .env("APX_STATE_DIR", self.state_dir())
            .env("APX_SYSTEMD", "0")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("cannot run apx")
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("cannot run apx")
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run apx");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// `apx init --yes` with an upstream at `mock` for openai and anthropic.
    pub fn init_with_mock(&self, mock: &str) {
        self.init_with_mock_capturing(mock, "userspace");
    }

    /// [`Home::init_with_mock`] with `logging.capture = capture`.
    pub fn init_with_mock_capturing(&self, mock: &str, capture: &str) {
        let out = self.run_env(
            &[
                "init",
                "--yes",
                "--provider",
                "openai,anthropic",
                "--base-url",
                &format!("openai=http://{mock}/v1"),
                "--base-url",
                &format!("anthropic=http://{mock}"),
                "--port",
                &self.port.to_string(),
                "--capture",
                capture,
            ],
            &[
                ("OPENAI_API_KEY", OPENAI_KEY),
                ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
            ],
        );
        assert_ok(&out, "init");
    }

    pub fn client_key(&self) -> String {
        std::fs::read_to_string(self.file("client.key"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if self.config().exists() {
            let _ = self.run(&["stop", "--force", "--timeout", "5s"]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

pub fn assert_code(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}:\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The mock OpenAI + Anthropic upstream, stopped on drop.
pub struct Mock {
    child: Child,
    pub addr: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mock_bin() -> PathBuf {
    let dir = apx_bin().parent().unwrap().to_path_buf();
    let bin = dir.join("apx-mock-upstream");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "apx-mock-upstream"])
            .status()
            .expect("cannot run cargo to build the mock upstream");
        assert!(status.success(), "building apx-mock-upstream failed");
    }
    bin
}

pub fn mock() -> Mock {
    let mut child = Command::new(mock_bin())
        .args(["--listen", "127.0.0.1:0", "--no-record"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start apx-mock-upstream");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected mock output: {line}"))
        .to_string();
    Mock { child, addr }
}

/// Waits until `f` holds, up to `timeout`.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
