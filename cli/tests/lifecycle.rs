//! start → call → status → keys → stop against the mock upstream, and every
//! error path of `apx call` (gateway down, key refused, unknown model).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn start_call_status_keys_stop() {
    let mock = mock();
    let home = Home::new("lifecycle");
    home.init_with_mock(&mock.addr);

    // Not running yet.
    let out = home.run(&["status"]);
    assert_code(&out, 3, "status before start");
    assert!(text(&out.stdout).contains("not running"));
    let out = home.run(&["call", "openai", "hello"]);
    assert_code(&out, 3, "call before start");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not reachable") && stderr.contains("apx start"),
        "{stderr}"
    );

    // Start: a managed daemon with a pidfile and a log.
    let out = home.run(&["start"]);
    assert_ok(&out, "start");
    assert!(
        text(&out.stdout).contains("apx is running"),
        "{}",
        text(&out.stdout)
    );
    let pid: i32 = std::fs::read_to_string(home.state_dir().join("apx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(home.state_dir().join("apx.log").exists());
    let again = home.run(&["start"]);
    assert_ok(&again, "second start");
    assert!(text(&again.stdout).contains("already running"));

    // Streamed answers in both API families, prompt as words or on stdin.
    let out = home.run(&["call", "openai", "Hello", "there"]);
    assert_ok(&out, "call openai");
    assert_eq!(
        text(&out.stdout),
        "Hello from gpt-4o-mini! You said: Hello there\n"
    );
    let out = home.run(&["call", "anthropic", "--system", "be brief", "Hi", "Claude"]);
    assert_ok(&out, "call anthropic");
    assert_eq!(
        text(&out.stdout),
        "Hello from claude-sonnet-4-5! You said: Hi Claude\n"
    );
    // Both calls are in the log store, readable with `apx logs`.
    let mut lines = Vec::new();
    for _ in 0..40 {
        let out = home.run(&["logs", "--json", "--path", "/v1/"]);
        assert_ok(&out, "logs --json");
        lines = text(&out.stdout).lines().map(str::to_string).collect();
        if lines.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["url.path"], "/v1/chat/completions");
    assert_eq!(first["http.response.status_code"], 200);
    assert_eq!(first["gen_ai.request.model"], "gpt-4o-mini");
    assert!(first["apx.key.name"].is_string());
    let out = home.run(&["logs", "--model", "claude-sonnet-4-5"]);
    assert_ok(&out, "logs --model");
    let table = text(&out.stdout);
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("/v1/messages"), "{table}");
    // `--follow` prints the matching calls stored after it started, and
    // only those.
    let mut follow = home
        .cmd(&["logs", "--follow", "--json", "--model", "claude-sonnet-4-5"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let wait = Duration::from_secs(10);
    let old: Value = serde_json::from_str(&lines_rx.recv_timeout(wait).unwrap()).unwrap();
    assert_ok(&home.run(&["call", "openai", "not followed"]), "call");
    assert_ok(
        &home.run(&["call", "--model", "claude-sonnet-4-5", "followed"]),
        "call",
    );
    let new: Value = serde_json::from_str(&lines_rx.recv_timeout(wait).unwrap()).unwrap();
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert_eq!(new["gen_ai.request.model"], "claude-sonnet-4-5");
    assert!(new["id"].as_i64() > old["id"].as_i64(), "{old} then {new}");
    assert!(lines_rx.recv_timeout(Duration::from_millis(300)).is_err());
    let out = home.run_stdin(&["call", "openai"], "from stdin\n");
    assert_ok(&out, "call with the prompt on stdin");
    assert!(text(&out.stdout).contains("You said: from stdin"));
    let out = home.run(&[
        "call",
        "--model",
        "claude-sonnet-4-5",
        "--no-stream",
        "whole",
    ]);
    assert_ok(&out, "call --no-stream");
    assert!(text(&out.stdout).contains("You said: whole"));
    let out = home.run(&["call", "openai", "--json", "raw"]);
    assert_ok(&out, "call --json");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["object"], "chat.completion");

    // Errors: unknown model (5), refused key (4), no prompt (2).
    let out = home.run(&["call", "--model", "no-such-model", "hi"]);
    assert_code(&out, 5, "unknown model");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("unknown model") && stderr.contains("gpt-4o-mini"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        2,
        "one error line and one hint: {stderr}"
    );
    let out = home.run_env(
        &["call", "openai", "hi"],
        &[("APX_API_KEY", "apx-not-a-real-key")],
    );
    assert_code(&out, 4, "refused key");
    assert!(text(&out.stderr).contains("refused the key"));
    let out = home.run_stdin(&["call", "openai"], "  \n");
    assert_code(&out, 2, "empty prompt");

    // Models and status.
    let out = home.run(&["models"]);
    assert_ok(&out, "models");
    let models = text(&out.stdout);
    assert!(
        models.contains("gpt-4o-mini") && models.contains("claude-sonnet-4-5"),
        "{models}"
    );
    let out = home.run(&["status", "--json"]);
    assert_ok(&out, "status");
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], pid);
    assert_eq!(status["manager"], "managed daemon");
    assert_eq!(status["url"], format!("http://127.0.0.1:{}", home.port));
    if status["requests_total"].is_u64() {
        assert!(status["requests_total"].as_u64().unwrap() >= 5, "{status}");
        assert_eq!(status["capture_mode"], "userspace");
        // The calls above are in the log store (written in 50 ms batches).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut status = status;
        while status["log_records_written"].as_u64().unwrap_or(0) < 5
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let out = home.run(&["status", "--json"]);
            status = serde_json::from_slice(&out.stdout).unwrap();
        }
        assert!(
            status["log_records_written"].as_u64().unwrap_or(0) >= 5,
            "{status}"
        );
        assert_eq!(status["log_records_dropped"], 0, "{status}");
    }

    // A new key works at once; a revoked one is refused without a restart.
    let out = home.run(&["keys", "create", "--name", "alice", "--expires", "1d"]);
    assert_ok(&out, "keys create");
    let alice = text(&out.stdout).trim().to_string();
    assert!(alice.starts_with("apx-"));
    let out = home.run_env(&["call", "openai", "as alice"], &[("APX_API_KEY", &alice)]);
    assert_ok(&out, "call with the new key");
    let out = home.run(&["keys", "list", "--json"]);
    let keys: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert!(
        !text(&out.stdout).contains(&alice),
        "the key itself must not be listed"
    );
    assert_ok(&home.run(&["keys", "revoke", "alice"]), "keys revoke");
    let refused = eventually(Duration::from_secs(3), || {
        home.run_env(&["call", "openai", "hi"], &[("APX_API_KEY", &alice)])
            .status
            .code()
            == Some(4)
    });
    assert!(refused, "the revoked key is still accepted");
    let out = home.run(&["keys", "revoke", "nobody"]);
    assert_code(&out, 1, "revoke unknown key");
    let out = home.run(&["keys", "create", "--name", "alice"]);
    assert_code(&out, 1, "duplicate key name");

    // Restart picks a new process; stop is graceful and idempotent.
    assert_ok(&home.run(&["restart"]), "restart");
    let new_pid: i32 = std::fs::read_to_string(home.state_dir().join("apx.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new_pid, pid);
    let out = home.run(&["stop"]);
    assert_ok(&out, "stop");
    assert!(text(&out.stdout).contains("stopped"));
    assert!(!home.state_dir().join("apx.pid").exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{new_pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{new_pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    let out = home.run(&["stop"]);
    assert_ok(&out, "second stop");
    assert!(text(&out.stdout).contains("not running"));
    assert_code(&home.run(&["status"]), 3, "status after stop");
    assert_code(&home.run(&["call", "openai", "hi"]), 3, "call after stop");
    assert_code(&home.run(&["models"]), 3, "models after stop");
}

#[test]
fn start_fails_with_the_log_tail_when_the_gateway_cannot_run() {
    let home = Home::new("start-fail");
    let port = home.port.to_string();
    assert_ok(
        &home.run(&["init", "--yes", "--provider", "vllm", "--port", &port]),
        "init",
    );
    // A key store the gateway cannot open (a directory where the SQLite
    // file belongs): the daemon starts, then exits.
    let store = home.state_dir().join("state.db");
    std::fs::remove_file(&store).unwrap();
    std::fs::create_dir_all(store.join("blocker")).unwrap();
    let out = home.run(&["start", "--timeout", "10s"]);
    assert_code(&out, 1, "start with an unusable state dir");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("exited during start"), "{stderr}");
    assert!(stderr.contains("the end of"), "no log tail: {stderr}");
    assert!(
        stderr.contains("state.db"),
        "the log tail names the cause: {stderr}"
    );
    assert!(stderr.contains("apx doctor"), "{stderr}");
    assert!(!home.state_dir().join("apx.pid").exists());
}

#[test]
fn start_refuses_a_taken_port_and_a_missing_credential() {
    let home = Home::new("start-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    assert_ok(
        &home.run(&["init", "--yes", "--provider", "ollama", "--port", &port]),
        "init",
    );
    let out = home.run(&["start"]);
    assert_code(&out, 1, "start on a taken port");
    assert!(
        text(&out.stderr).contains("already in use"),
        "{}",
        text(&out.stderr)
    );
    drop(taken);

    // A credential that is in neither apx.env nor the environment.
    let config = std::fs::read_to_string(home.config()).unwrap();
    let with_key = config.replace(
        "kind = \"openai\"\n",
        "kind = \"openai\"\napi_key = \"${APX_TEST_MISSING}\"\n",
    );
    std::fs::write(home.config(), with_key).unwrap();
    let out = home.run(&["start"]);
    assert_code(&out, 1, "start without the credential");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("APX_TEST_MISSING"), "{stderr}");
}

#[test]
fn completions_and_help() {
    let home = Home::new("completions");
    for shell in ["bash", "zsh", "fish"] {
        let out = home.run(&["completions", shell]);
        assert_ok(&out, shell);
        let script = text(&out.stdout);
        assert!(
            script.contains("doctor") && script.contains("keys"),
            "{shell}"
        );
    }
    for command in [
        "doctor",
        "init",
        "start",
        "stop",
        "restart",
        "status",
        "call",
        "models",
        "keys",
        "completions",
    ] {
        let out = home.run(&[command, "--help"]);
        assert_ok(&out, command);
        assert!(
            text(&out.stdout).contains("Examples:"),
            "{command} --help has no examples"
        );
    }
    let out = home.run(&["--help"]);
    assert!(text(&out.stdout).contains("Exit codes:"));
}
