//! `apx serve` and `apx check`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::local::Local;

#[derive(clap::Args)]
pub struct Args {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Remove this pidfile on exit if it still names this process (used by
    /// the daemon `apx start` runs).
    #[arg(long, value_name = "FILE", hide = true)]
    pidfile: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// mimalloc reads its options from the environment before `main`. Its
/// defaults (arenas committed eagerly, freed memory kept for a while) doubled
/// the gateway's resident memory for no measurable CPU gain, so `apx serve`
/// re-executes itself once with tighter settings unless the user set them.
fn tune_allocator_or_reexec() {
    const SETTINGS: [(&str, &str); 2] = [
        ("MIMALLOC_ARENA_EAGER_COMMIT", "0"),
        ("MIMALLOC_PURGE_DELAY", "0"),
    ];
    if SETTINGS
        .iter()
        .any(|(name, _)| std::env::var_os(name).is_some())
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(exe);
    command.args(std::env::args_os().skip(1));
    for (name, value) in SETTINGS {
        command.env(name, value);
    }
    // exec only returns on failure; then run with the defaults.
    let err = command.exec();
    eprintln!("note: could not re-execute with memory settings ({err}); continuing");
}

/// A proxied call holds two sockets (client and upstream), so the usual
/// soft limit of 1 024 open files would cap the gateway near 500 calls in
/// flight, and every connection past it would be refused. Like Go's
/// runtime, raise the soft limit to the hard one (systemd's unit sets both
/// with `LimitNOFILE`; a foreground or daemon `apx serve` inherits the
/// shell's).
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            eprintln!("note: open-file limit stays at {soft} ({err})");
        }
    }
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    tune_allocator_or_reexec();
    raise_open_file_limit();
    // eBPF programs are loaded by a short-lived copy of this binary: the
    // kernel BTF that loading parses stays out of the gateway's memory.
    // /proc/self/exe runs even if the file was replaced since.
    apx_gateway::logging::ebpf_loader::use_loader_process(
        "/proc/self/exe".into(),
        vec!["__ebpf-loader".into()],
    );
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    // `${NAME}` references resolve from apx.env beside the config first, as
    // under systemd's EnvironmentFile=, so a foreground `apx serve` runs the
    // same gateway as `apx start`.
    let config = Local::discover(config_path)?.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(apx_gateway::run(config));
    if let Some(pidfile) = &args.pidfile {
        let ours = std::fs::read_to_string(pidfile)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(pidfile);
        }
    }
    result?;
    Ok(())
}

pub fn check(config_path: &Path) -> anyhow::Result<()> {
    let config = Local::discover(config_path)?.config()?;
    println!(
        "{}: ok ({} providers, {} models, {} keys, listening on {})",
        config_path.display(),
        config.providers.len(),
        config.models.len(),
        config.keys.len(),
        config.listen
    );
    Ok(())
}
