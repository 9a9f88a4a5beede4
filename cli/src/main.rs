//! `apx`: the command that installs, configures, runs and queries the apx AI gateway.

mod client;
mod commands;
mod envfile;
mod exit;
mod local;
mod paths;
mod service;
mod sse;
mod template;
mod templates;
mod ui;

use std::path::PathBuf;

/// glibc's and especially musl's allocators are slow under the gateway's
/// many small per-request allocations; mimalloc is not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::exit::Failure;

/// apx: a fast AI gateway with kernel-level request logging.
#[derive(Parser)]
#[command(
    name = "apx",
    version,
    about,
    long_about = None,
    after_help = concat!(
        "Quick start:\n",
        "  apx doctor                 # what this machine supports\n",
        "  apx init                   # write a config, env file and first key\n",
        "  apx start                  # run the gateway in the background\n",
        "  apx call openai \"Hello\"    # a streamed answer through the gateway\n\n",
        "Files: the config is --config / $APX_CONFIG / ~/.config/apx/apx.toml / /etc/apx/apx.toml;\n",
        "secrets live beside it in apx.env (mode 0600). `apx paths` lists them all.\n\n",
        "Colours are used on a terminal only, never with NO_COLOR set.\n\n",
        "Exit codes:\n",
        "  0  success\n",
        "  1  failure (a doctor check failed, a file could not be written, ...)\n",
        "  2  usage: bad flag or argument, or a question with no answer and no TTY\n",
        "  3  the gateway is not running or cannot be reached\n",
        "  4  the gateway refused the gateway key\n",
        "  5  the gateway answered with another error (unknown model, upstream failure, ...)"
    )
)]
struct Cli {
    /// Config file (default: $APX_CONFIG, else ~/.config/apx/apx.toml, else /etc/apx/apx.toml).
    #[arg(long, global = true, env = "APX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check what this machine supports: kernel, BTF, eBPF, capabilities, config, port.
    #[command(after_help = commands::doctor::HELP)]
    Doctor(commands::doctor::Args),
    /// Write the config, the env file with secrets, the systemd unit and the first key.
    #[command(after_help = commands::init::HELP)]
    Init(commands::init::Args),
    /// Start the gateway in the background (systemd, or a managed daemon).
    #[command(after_help = commands::lifecycle::START_HELP)]
    Start(commands::lifecycle::StartArgs),
    /// Stop the gateway gracefully.
    #[command(after_help = commands::lifecycle::STOP_HELP)]
    Stop(commands::lifecycle::StopArgs),
    /// Stop the gateway, then start it again (picks up config changes).
    #[command(after_help = commands::lifecycle::RESTART_HELP)]
    Restart(commands::lifecycle::StartArgs),
    /// Show whether the gateway runs: pid, uptime, address, capture mode, requests.
    #[command(after_help = commands::lifecycle::STATUS_HELP)]
    Status(commands::lifecycle::StatusArgs),
    /// Send a prompt through the local gateway and stream the answer.
    #[command(after_help = commands::call::HELP)]
    Call(commands::call::Args),
    /// List the models the gateway serves.
    #[command(after_help = commands::models::HELP)]
    Models(commands::models::Args),
    /// Show recorded calls: filter, follow, JSON lines.
    #[command(after_help = commands::logs::HELP)]
    Logs(commands::logs::Args),
    /// Create, list and revoke gateway keys.
    #[command(subcommand, after_help = commands::keys::HELP)]
    Keys(commands::keys::Command),
    /// Print a shell completion script.
    #[command(after_help = commands::completions::HELP)]
    Completions(commands::completions::Args),
    /// Run the gateway in the foreground until SIGTERM or Ctrl-C.
    #[command(
        after_help = "Examples:\n  apx serve\n  apx serve --config ./apx.toml\n  RUST_LOG=debug apx serve"
    )]
    Serve(commands::serve::Args),
    /// Check a config file without starting the gateway.
    #[command(after_help = "Examples:\n  apx check\n  apx check --config ./apx.toml")]
    Check,
    /// Show where apx keeps its files.
    #[command(after_help = "Examples:\n  apx paths\n  apx paths --json\n  apx paths state_dir")]
    Paths(commands::paths::Args),
    /// Internal: loads the eBPF capture programs for `apx serve`, which runs
    /// it (see apx_gateway::logging::ebpf_loader).
    #[command(name = "__ebpf-loader", hide = true)]
    EbpfLoader,
}

fn main() -> ExitCode {
    ui::init_colours();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    let config_path = paths::config_path(cli.config.as_deref());
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(&config_path, args),
        Command::Init(args) => commands::init::run(&config_path, args),
        Command::Start(args) => commands::lifecycle::start(&config_path, args),
        Command::Stop(args) => commands::lifecycle::stop(&config_path, args),
        Command::Restart(args) => commands::lifecycle::restart(&config_path, args),
        Command::Status(args) => commands::lifecycle::status(&config_path, args),
        Command::Call(args) => commands::call::run(&config_path, args),
        Command::Models(args) => commands::models::run(&config_path, args),
        Command::Logs(args) => commands::logs::run(&config_path, args),
        Command::Keys(command) => commands::keys::run(&config_path, command),
        Command::Completions(args) => commands::completions::run(Cli::command(), args),
        Command::Serve(args) => commands::serve::run(&config_path, args),
        Command::Check => commands::serve::check(&config_path),
        Command::Paths(args) => commands::paths::run(&config_path, args),
        Command::EbpfLoader => {
            let code = apx_gateway::logging::ebpf_loader::serve_loader_request();
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`apx keys list |
/// head`) would panic; a command-line tool should just end, as `cat` does.
/// Not for `apx serve`, whose sockets must not kill it.
fn restore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL is not a Rust handler, and this runs at start, before
    // any thread exists.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Prints an error as one line (plus a hint line) and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        if !failure.message.is_empty() {
            eprintln!("{} {}", ui::err_red("error:"), failure.message);
        }
        if let Some(hint) = &failure.hint {
            eprintln!("{} {hint}", ui::err_dim("hint:"));
        }
        return ExitCode::from(failure.code);
    }
    eprintln!("{} {err:#}", ui::err_red("error:"));
    ExitCode::from(exit::FAILURE)
}
