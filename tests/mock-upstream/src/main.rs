//! `apx-mock-upstream [--listen 127.0.0.1:0] [--openai-key K] [--anthropic-key K] [--no-record]`
//!
//! Prints `listening on 127.0.0.1:PORT` once ready, then serves until
//! SIGTERM / SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use apx_mock_upstream::{MockOptions, MockUpstream};

const USAGE: &str = "usage: apx-mock-upstream [--listen ADDR] [--openai-key KEY] \
                     [--anthropic-key KEY] [--no-record]";

struct Args {
    listen: SocketAddr,
    opts: MockOptions,
    record: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        opts: MockOptions::default(),
        record: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                args.listen = v
                    .parse()
                    .map_err(|e| format!("--listen {v}: {e}\n{USAGE}"))?;
            }
            "--openai-key" => args.opts.openai_key = value("--openai-key")?,
            "--anthropic-key" => args.opts.anthropic_key = value("--anthropic-key")?,
            "--no-record" => args.record = false,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("apx-mock-upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Install the handlers before announcing readiness so a SIGTERM sent
        // right after the "listening on" line is never fatal.
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("apx-mock-upstream: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mock = match MockUpstream::bind(args.listen, args.opts).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("apx-mock-upstream: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        mock.set_recording(args.record);
        let mut out = std::io::stdout().lock();
        if writeln!(out, "listening on {}", mock.addr())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
        drop(out);
        signals.wait().await;
        drop(mock);
        ExitCode::SUCCESS
    })
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn wait(self) {
        // Without a handler there is nothing better to do than run forever.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
