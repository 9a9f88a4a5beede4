//! `apx start | stop | restart | status`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use apx_gateway::config::units::parse_duration;
use http::StatusCode;
use serde_json::{Value, json};

use crate::client::Client;
use crate::exit::{self, Failure, fail};
use crate::local::{self, Local};
use crate::service::{self, Daemon, Manager};
use crate::ui;

pub const START_HELP: &str = "Examples:
  apx start
  apx start --timeout 30s
  APX_SYSTEMD=0 apx start     # a managed daemon even where systemd runs

Under systemd (when it is the running init and `apx init` installed the
unit) this is `systemctl start apx`; otherwise apx runs itself as a daemon
in its own session, with a pidfile and a log file in the state directory
(`apx paths` shows them). Waits until the gateway answers /healthz; if it
does not come up, prints the end of its log and exits 1.";

pub const STOP_HELP: &str = "Examples:
  apx stop
  apx stop --timeout 60s --force

Sends SIGTERM: the gateway stops accepting, lets requests in flight finish
(up to the config's shutdown_grace) and exits. Stopping a gateway that is
not running is not an error.";

pub const RESTART_HELP: &str = "Examples:
  apx restart

Stops the gateway (if it runs) and starts it again with the current config.";

pub const STATUS_HELP: &str = "Examples:
  apx status
  apx status --json

Exit code 0 when the gateway runs, 3 when it does not.";

#[derive(clap::Args)]
pub struct StartArgs {
    /// How long to wait for the gateway to answer before giving up.
    #[arg(long, default_value = "15s", value_name = "DURATION")]
    timeout: String,
}

#[derive(clap::Args)]
pub struct StopArgs {
    /// How long to wait after SIGTERM (default: the config's shutdown_grace + 5s).
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Kill the gateway (SIGKILL) if it has not stopped by then.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

fn duration_arg(text: &str, flag: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|m| fail(exit::USAGE, format!("{flag}: {m}")))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Whether `/healthz` answers 200 right now.
fn healthy(runtime: &tokio::runtime::Runtime, client: &Client) -> bool {
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(2), client.get_json("/healthz")).await
        })
        .is_ok_and(|answer| answer.is_ok_and(|(status, _)| status == StatusCode::OK))
}

pub fn start(config_path: &Path, args: StartArgs) -> anyhow::Result<()> {
    let timeout = duration_arg(&args.timeout, "--timeout")?;
    let local = Local::discover(config_path)?;
    let config = local.config().map_err(|err| {
        Failure::new(exit::FAILURE, format!("{err:#}"))
            .hint("fix the config (`apx check` re-checks it), then `apx start` again")
    })?;
    let addr = local::connect_addr(config.listen);
    let client = Client::new(addr, None);
    let runtime = runtime()?;
    let manager = service::manager_for(config_path);
    let url = format!("http://{addr}");
    match &manager {
        Manager::Managed => {
            let daemon = Daemon::of(&config.state_dir);
            if let Some(pid) = daemon.running() {
                println!("apx is already running (pid {pid}, {url})");
                return Ok(());
            }
            daemon.clear_stale();
            check_port_free(&runtime, config.listen, &client)?;
            let exe = std::env::current_exe().context("cannot find the apx binary")?;
            let mut child = daemon.spawn(&exe, config_path, local.env_strict()?)?;
            let pid = child.id();
            let spinner = ui::spinner(format!("starting apx on {url}"));
            let deadline = Instant::now() + timeout;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    spinner.finish_and_clear();
                    let _ = std::fs::remove_file(&daemon.pidfile);
                    return Err(not_up(
                        &format!("the gateway exited during start ({status})"),
                        &daemon.log_tail(20),
                        &daemon.log.display().to_string(),
                    ));
                }
                if healthy(&runtime, &client) {
                    break;
                }
                if Instant::now() >= deadline {
                    spinner.finish_and_clear();
                    let _ = service::terminate(pid as i32, Duration::from_secs(5), true);
                    let _ = std::fs::remove_file(&daemon.pidfile);
                    return Err(not_up(
                        &format!(
                            "the gateway did not answer on {url} within {}s",
                            timeout.as_secs()
                        ),
                        &daemon.log_tail(20),
                        &daemon.log.display().to_string(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            spinner.finish_and_clear();
            println!(
                "{} apx is running: pid {pid}, {url} (managed daemon, log: {})",
                ui::green("✓"),
                daemon.log.display()
            );
        }
        Manager::Systemd { system, .. } => {
            if service::systemd_main_pid(*system).is_some() && healthy(&runtime, &client) {
                println!("apx is already running ({url}, {})", manager.name());
                return Ok(());
            }
            check_port_free(&runtime, config.listen, &client)?;
            service::systemctl(*system, &["start", service::UNIT_NAME])?;
            let spinner = ui::spinner(format!("starting apx on {url} (systemd)"));
            let deadline = Instant::now() + timeout;
            while !healthy(&runtime, &client) {
                if Instant::now() >= deadline {
                    spinner.finish_and_clear();
                    return Err(not_up(
                        &format!(
                            "the gateway did not answer on {url} within {}s",
                            timeout.as_secs()
                        ),
                        &service::journal_tail(*system, 20),
                        "journalctl -u apx",
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            spinner.finish_and_clear();
            let pid = service::systemd_main_pid(*system)
                .map_or_else(String::new, |pid| format!("pid {pid}, "));
            println!(
                "{} apx is running: {pid}{url} ({})",
                ui::green("✓"),
                manager.name()
            );
        }
    }
    println!(
        "{}",
        ui::dim("next: apx call openai \"Hello\"   ·   apx status   ·   apx stop")
    );
    Ok(())
}

/// Refuses to start when another process holds the port.
fn check_port_free(
    runtime: &tokio::runtime::Runtime,
    listen: SocketAddr,
    client: &Client,
) -> anyhow::Result<()> {
    match TcpListener::bind(listen) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            let what = if healthy(runtime, client) {
                "a gateway not started by `apx start` for this config (maybe a foreground `apx serve`, or another config)"
            } else {
                "another program"
            };
            Err(Failure::new(
                exit::FAILURE,
                format!("{listen} is already in use by {what}"),
            )
            .hint("stop it, or pick another port: `listen` in the config, or `apx init --force --port N`")
            .into())
        }
        Err(err) => Err(fail(
            exit::FAILURE,
            format!("cannot listen on {listen}: {err}"),
        )),
    }
}

fn not_up(message: &str, log_tail: &str, log_name: &str) -> anyhow::Error {
    let mut text = message.to_string();
    if log_tail.trim().is_empty() {
        text.push_str(&format!(" (nothing in {log_name})"));
    } else {
        text.push_str(&format!("; the end of {log_name}:\n"));
        for line in log_tail.lines() {
            text.push_str(&format!("  {line}\n"));
        }
        text.pop();
    }
    Failure::new(exit::FAILURE, text)
        .hint("`apx doctor` checks the config, credentials and port")
        .into()
}

pub fn stop(config_path: &Path, args: StopArgs) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    let timeout = match &args.timeout {
        Some(text) => duration_arg(text, "--timeout")?,
        None => {
            local
                .config_lenient()
                .map(|c| c.limits.shutdown_grace.0)
                .unwrap_or(Duration::from_secs(30))
                + Duration::from_secs(5)
        }
    };
    match service::manager_for(config_path) {
        Manager::Managed => {
            let daemon = Daemon::of(&local.state_dir());
            let Some(pid) = daemon.running() else {
                daemon.clear_stale();
                println!("apx is not running");
                return Ok(());
            };
            let spinner = ui::spinner(format!("stopping apx (pid {pid})"));
            let result = service::terminate(pid, timeout, args.force);
            spinner.finish_and_clear();
            let killed = result.map_err(|err| fail(exit::FAILURE, format!("{err:#}")))?;
            let _ = std::fs::remove_file(&daemon.pidfile);
            if killed {
                println!(
                    "{} apx killed (pid {pid}) after {}s",
                    ui::yellow("!"),
                    timeout.as_secs()
                );
            } else {
                println!("{} apx stopped (pid {pid})", ui::green("✓"));
            }
        }
        Manager::Systemd { system, .. } => {
            let spinner = ui::spinner("stopping apx (systemd)");
            let result = service::systemctl(system, &["stop", service::UNIT_NAME]);
            spinner.finish_and_clear();
            result?;
            println!("{} apx stopped", ui::green("✓"));
        }
    }
    Ok(())
}

pub fn restart(config_path: &Path, args: StartArgs) -> anyhow::Result<()> {
    stop(
        config_path,
        StopArgs {
            timeout: None,
            force: true,
        },
    )?;
    start(config_path, args)
}

pub fn status(config_path: &Path, args: StatusArgs) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    let config = local.config_lenient().ok();
    let state_dir = config
        .as_ref()
        .map_or_else(|| local.state_dir(), |c| c.state_dir.clone());
    let manager = service::manager_for(config_path);
    let daemon = Daemon::of(&state_dir);
    let pid = match &manager {
        Manager::Managed => daemon.running(),
        Manager::Systemd { system, .. } => service::systemd_main_pid(*system),
    };
    let addr = match &config {
        Some(config) => Some(local::gateway_addr(config.listen)?),
        None => None,
    };
    let runtime = runtime()?;
    // The gateway's own view: version, pid, uptime, counters.
    let live = addr.and_then(|addr| {
        let client = Client::new(addr, None);
        runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(3), client.get_json("/apx/status")).await
            })
            .ok()
            .and_then(Result::ok)
    });
    let gateway: Option<Value> = match &live {
        Some((StatusCode::OK, body)) if body.is_object() => Some(body.clone()),
        _ => None,
    };
    let answers = live.is_some();
    let managed_pid = pid;
    let running = pid.is_some() || answers;
    let pid = pid.or_else(|| {
        gateway
            .as_ref()
            .and_then(|g| g.get("pid")?.as_i64())
            .and_then(|p| i32::try_from(p).ok())
    });
    let uptime = gateway
        .as_ref()
        .and_then(|g| g.get("uptime_secs")?.as_u64())
        .or_else(|| pid.and_then(service::process_uptime).map(|d| d.as_secs()));
    let field = |name: &str| gateway.as_ref().and_then(|g| g.get(name)).cloned();
    let capture =
        field("capture_mode").or_else(|| config.as_ref().map(|c| json!(c.logging.capture.name())));
    let log = match &manager {
        Manager::Managed => daemon.log.display().to_string(),
        Manager::Systemd { .. } => "journalctl -u apx".to_string(),
    };
    let summary = json!({
        "running": running,
        "answering": answers,
        "manager": if managed_pid.is_some() || !running {
            manager.name()
        } else {
            "not started by `apx start` for this config"
        },
        "pid": pid,
        "uptime_secs": uptime,
        "listen": field("listen").or_else(|| config.as_ref().map(|c| json!(c.listen.to_string()))),
        "url": addr.map(|a| format!("http://{a}")),
        "capture_mode": capture,
        "requests_total": field("requests_total"),
        "requests_in_flight": field("requests_in_flight"),
        "streams_active": field("streams_active"),
        "log_records_written": field("log_records_written"),
        "log_records_dropped": field("log_records_dropped"),
        "version": field("version"),
        "config": config_path.display().to_string(),
        "log": log,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_status(&summary, running, answers);
    }
    if running {
        Ok(())
    } else {
        Err(Failure::silent(exit::NOT_RUNNING).into())
    }
}

fn print_status(s: &Value, running: bool, answers: bool) {
    let text = |name: &str| match &s[name] {
        Value::Null => None,
        Value::String(t) => Some(t.clone()),
        other => Some(other.to_string()),
    };
    if !running {
        println!("{} apx is not running", ui::red("●"));
        println!("  {:<10} {}", "config", text("config").unwrap_or_default());
        println!("{}", ui::dim("start it with `apx start`"));
        return;
    }
    let state = if answers {
        ui::green("●")
    } else {
        ui::yellow("●")
    };
    let manager = text("manager").unwrap_or_default();
    let note = if answers { "" } else { ", not answering" };
    println!("{state} apx is running ({manager}{note})");
    let row = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            println!("  {:<10} {value}", name);
        }
    };
    row("pid", text("pid"));
    row("uptime", s["uptime_secs"].as_u64().map(ui::human_duration));
    row("listening", text("url"));
    row("capture", text("capture_mode"));
    let requests = match (
        s["requests_total"].as_u64(),
        s["requests_in_flight"].as_u64(),
        s["streams_active"].as_u64(),
    ) {
        (Some(total), Some(flight), Some(streams)) => Some(format!(
            "{total} total, {flight} in flight, {streams} streams"
        )),
        _ => Some("n/a (this gateway has no /apx/status)".to_string()),
    };
    row("requests", requests);
    if let (Some(written), Some(dropped)) = (
        s["log_records_written"].as_u64(),
        s["log_records_dropped"].as_u64(),
    ) {
        row(
            "records",
            Some(format!("{written} stored, {dropped} dropped")),
        );
    }
    row("version", text("version"));
    row("config", text("config"));
    row("log", text("log"));
}
