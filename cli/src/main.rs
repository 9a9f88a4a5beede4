//! `apx`: the command that installs, configures, runs and queries the apx AI gateway.

mod commands;
mod paths;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// apx: a fast AI gateway with kernel-level request logging.
#[derive(Parser)]
#[command(name = "apx", version, about, long_about = None)]
struct Cli {
    /// Config file (default: $APX_CONFIG, else ~/.config/apx/apx.toml, else /etc/apx/apx.toml).
    #[arg(long, global = true, env = "APX_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until SIGTERM or Ctrl-C.
    #[command(
        after_help = "Examples:\n  apx serve\n  apx serve --config ./apx.toml\n  RUST_LOG=debug apx serve"
    )]
    Serve(commands::serve::Args),
    /// Check a config file without starting the gateway.
    #[command(after_help = "Examples:\n  apx check\n  apx check --config ./apx.toml")]
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = paths::config_path(cli.config.as_deref());
    let result = match cli.command {
        Command::Serve(args) => commands::serve::run(&config_path, args),
        Command::Check => commands::serve::check(&config_path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
