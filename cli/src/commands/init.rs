//! `apx init`: the setup wizard (or its flags), rendering `templates/` into
//! the gateway config, the env file with secrets and the systemd unit, and
//! creating the first gateway key.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use apx_gateway::auth::KeyHash;
use apx_gateway::config::units::parse_duration;
use apx_gateway::providers::catalog::{self, CATALOG, CatalogEntry};
use apx_gateway::store::StoreError;
use apx_gateway::store::keys::KeyStore;
use dialoguer::theme::ColorfulTheme;
use dialoguer::{Input, MultiSelect, Password, Select};

use crate::envfile::EnvVars;
use crate::exit::{self, Failure, fail};
use crate::local::Local;
use crate::paths::{self, Files};
use crate::service;
use crate::templates::{self, ConfigPlan, ModelPlan, ProviderPlan, UnitPlan};
use crate::ui;

pub const HELP: &str = "Examples:
  apx init                                   # the wizard, on a terminal
  apx init --yes                             # defaults: providers whose key is in the environment, else echo
  OPENAI_API_KEY=sk-... apx init --yes --provider openai
  apx init --yes --provider anthropic,ollama --model ollama=qwen2.5 --port 9000
  apx init --force --provider openai         # replace the config (the old one is kept as a backup)
  apx init --dry-run --yes                   # print the files instead of writing them

Provider keys are read from their usual environment variables (OPENAI_API_KEY,
ANTHROPIC_API_KEY, ...) or asked for with hidden input, and saved in apx.env
beside the config (mode 0600), never in the config itself. Without any key,
the built-in `echo` model gives a working gateway to try apx with.

Without a terminal (or with --yes) no question is asked: every answer comes
from a flag or its default.";

/// The name of the built-in test provider and model.
pub const ECHO: &str = "echo";
const DEFAULT_PORT: u16 = 8080;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureArg {
    /// eBPF where the kernel allows it, else user space.
    Auto,
    /// eBPF only; the gateway refuses to start without it.
    Ebpf,
    /// Records made by the gateway process itself.
    Userspace,
    /// No request records.
    Off,
}

impl CaptureArg {
    fn name(self) -> &'static str {
        match self {
            CaptureArg::Auto => "auto",
            CaptureArg::Ebpf => "ebpf",
            CaptureArg::Userspace => "userspace",
            CaptureArg::Off => "off",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Ask nothing: every answer from a flag or its default.
    #[arg(long, short)]
    yes: bool,
    /// Providers to configure, repeated or comma-separated: openai, anthropic,
    /// mistral, groq, deepseek, openrouter, together, ollama, vllm, echo.
    #[arg(long = "provider", value_delimiter = ',', value_name = "NAME")]
    providers: Vec<String>,
    /// The model for a provider (default: its usual one), e.g. openai=gpt-4o.
    #[arg(long = "model", value_name = "PROVIDER=MODEL")]
    models: Vec<String>,
    /// The base URL for a provider, e.g. ollama=http://10.0.0.5:11434/v1.
    #[arg(long = "base-url", value_name = "PROVIDER=URL")]
    base_urls: Vec<String>,
    /// Port to listen on, on 127.0.0.1 (default 8080, or the next free one).
    #[arg(long, conflicts_with = "listen")]
    port: Option<u16>,
    /// Full listen address, e.g. 0.0.0.0:8080 to accept other hosts.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Request capture mode.
    #[arg(long, value_enum)]
    capture: Option<CaptureArg>,
    /// How long request records are kept, e.g. 7d, 30d, 12h.
    #[arg(long, value_name = "DURATION")]
    retention: Option<String>,
    /// State directory for keys and logs (default: /var/lib/apx as root,
    /// else ~/.local/share/apx).
    #[arg(long, env = "APX_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Name of the first gateway key.
    #[arg(long, default_value = "default", value_name = "NAME")]
    key_name: String,
    /// Replace an existing config (it is kept as a backup).
    #[arg(long)]
    force: bool,
    /// Do not install the systemd unit even where systemd runs.
    #[arg(long)]
    no_systemd: bool,
    /// Print the files instead of writing them (secrets masked).
    #[arg(long)]
    dry_run: bool,
}

/// One provider as chosen.
#[derive(Clone, Debug)]
struct Chosen {
    name: String,
    title: String,
    kind: String,
    base_url: Option<String>,
    key_env: Option<String>,
    /// The key's value, to be saved in the env file.
    key: Option<String>,
    model: String,
}

/// Answers to every question.
#[derive(Debug)]
struct Answers {
    providers: Vec<Chosen>,
    listen: SocketAddr,
    capture: CaptureArg,
    retention: String,
}

fn pairs(values: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    values
        .iter()
        .map(|value| {
            value
                .split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| {
                    fail(
                        exit::USAGE,
                        format!("{flag} {value}: expected PROVIDER=VALUE"),
                    )
                })
        })
        .collect()
}

fn provider_names() -> String {
    let mut names: Vec<&str> = CATALOG.iter().map(|e| e.name).collect();
    names.push(ECHO);
    names.join(", ")
}

/// Whether this gateway build has the built-in echo provider.
fn echo_available() -> bool {
    apx_gateway::providers::ProviderKind::from_name(ECHO).is_some()
}

fn echo_choice() -> Chosen {
    Chosen {
        name: ECHO.to_string(),
        title: "Echo (built in)".to_string(),
        kind: ECHO.to_string(),
        base_url: None,
        key_env: None,
        key: None,
        model: ECHO.to_string(),
    }
}

fn catalog_choice(entry: &CatalogEntry) -> Chosen {
    Chosen {
        name: entry.name.to_string(),
        title: entry.display_name.to_string(),
        kind: entry.kind.name().to_string(),
        base_url: Some(entry.base_url.to_string()),
        key_env: entry.key_env.map(str::to_string),
        key: None,
        model: entry.default_model.to_string(),
    }
}

/// The first free port from 8080 on 127.0.0.1 (8080 itself if none is).
fn free_port() -> u16 {
    (DEFAULT_PORT..DEFAULT_PORT + 20)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap_or(DEFAULT_PORT)
}

fn parse_listen(args: &Args) -> anyhow::Result<Option<SocketAddr>> {
    if let Some(listen) = &args.listen {
        let addr = listen.parse::<SocketAddr>().map_err(|_| {
            fail(
                exit::USAGE,
                format!("--listen {listen}: expected host:port, e.g. 127.0.0.1:8080"),
            )
        })?;
        return Ok(Some(addr));
    }
    Ok(args
        .port
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port))))
}

fn check_retention(text: &str) -> Result<(), String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("the retention must be longer than 0".to_string());
    }
    Ok(())
}

/// A key for `var` known without asking: the environment, then the env file
/// of a previous `apx init`.
fn known_key(var: &str, existing: &EnvVars) -> Option<String> {
    std::env::var(var)
        .ok()
        .or_else(|| existing.get(var).cloned())
        .filter(|v| !v.trim().is_empty())
}

/// Answers from flags and defaults only.
fn answers_from_flags(args: &Args, existing: &EnvVars) -> anyhow::Result<Answers> {
    let mut providers = Vec::new();
    let names: Vec<String> = if args.providers.is_empty() {
        // Every catalog provider whose key is at hand; else echo.
        CATALOG
            .iter()
            .filter(|e| {
                e.key_env
                    .is_some_and(|var| known_key(var, existing).is_some())
            })
            .map(|e| e.name.to_string())
            .collect()
    } else {
        args.providers
            .iter()
            .map(|n| n.trim().to_lowercase())
            .collect()
    };
    for name in &names {
        if name == ECHO {
            providers.push(echo_choice());
            continue;
        }
        let entry = catalog::find(name).ok_or_else(|| {
            fail(
                exit::USAGE,
                format!("unknown provider `{name}` (known: {})", provider_names()),
            )
        })?;
        let mut chosen = catalog_choice(entry);
        if let Some(var) = entry.key_env {
            let key = known_key(var, existing).ok_or_else(|| {
                Failure::new(exit::USAGE, format!("{var} is not set, so {} cannot be configured", entry.display_name))
                    .hint(format!("`export {var}=...` and run again (the key is saved in apx.env), or run `apx init` on a terminal to type it"))
            })?;
            chosen.key = Some(key);
        }
        providers.push(chosen);
    }
    if providers.is_empty() {
        providers.push(echo_choice());
    }
    let listen =
        parse_listen(args)?.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let retention = args.retention.clone().unwrap_or_else(|| "30d".to_string());
    check_retention(&retention).map_err(|m| fail(exit::USAGE, format!("--retention: {m}")))?;
    let mut answers = Answers {
        providers,
        listen,
        capture: args.capture.unwrap_or(CaptureArg::Auto),
        retention,
    };
    apply_overrides(args, &mut answers)?;
    Ok(answers)
}

/// `--model` and `--base-url` for providers chosen either way.
fn apply_overrides(args: &Args, answers: &mut Answers) -> anyhow::Result<()> {
    for (provider, model) in pairs(&args.models, "--model")? {
        let chosen = answers
            .providers
            .iter_mut()
            .find(|c| c.name == provider)
            .ok_or_else(|| {
                fail(
                    exit::USAGE,
                    format!(
                        "--model {provider}=…: `{provider}` is not one of the chosen providers"
                    ),
                )
            })?;
        chosen.model = model;
    }
    for (provider, url) in pairs(&args.base_urls, "--base-url")? {
        let chosen = answers
            .providers
            .iter_mut()
            .find(|c| c.name == provider && c.kind != ECHO)
            .ok_or_else(|| {
                fail(
                    exit::USAGE,
                    format!(
                        "--base-url {provider}=…: `{provider}` is not one of the chosen providers"
                    ),
                )
            })?;
        chosen.base_url = Some(url);
    }
    Ok(())
}

fn prompt_error(err: dialoguer::Error) -> anyhow::Error {
    Failure::new(exit::USAGE, format!("the question was not answered: {err}"))
        .hint("run `apx init --yes` with flags to answer without a terminal")
        .into()
}

/// The wizard: every question, with flags as the defaults.
fn answers_from_wizard(args: &Args, existing: &EnvVars) -> anyhow::Result<Answers> {
    let theme = ColorfulTheme::default();
    eprintln!(
        "{}\n{}\n",
        ui::err_bold("apx init — set up the gateway"),
        ui::err_dim(
            "Space toggles, Enter confirms. Keys are saved in apx.env (mode 0600), never in the config."
        )
    );

    // Which providers.
    let mut items: Vec<String> = Vec::new();
    let mut defaults: Vec<bool> = Vec::new();
    for entry in CATALOG {
        let note = match entry.key_env {
            Some(var) if known_key(var, existing).is_some() => format!("{var} found"),
            Some(var) => format!("needs {var}"),
            None => "local server, no key".to_string(),
        };
        items.push(format!("{:<14} {}", entry.display_name, ui::dim(&note)));
        let preset = if args.providers.is_empty() {
            entry
                .key_env
                .is_some_and(|var| known_key(var, existing).is_some())
        } else {
            args.providers.iter().any(|p| p == entry.name)
        };
        defaults.push(preset);
    }
    items.push(format!(
        "{:<14} {}",
        "Echo",
        ui::dim("built-in test model: streams your prompt back, no key")
    ));
    let echo_default = if args.providers.is_empty() {
        !defaults.iter().any(|&d| d)
    } else {
        args.providers.iter().any(|p| p == ECHO)
    };
    defaults.push(echo_default);
    let picked = loop {
        let picked = MultiSelect::with_theme(&theme)
            .with_prompt("Which providers should the gateway serve?")
            .items(&items)
            .defaults(&defaults)
            .report(false)
            .interact()
            .map_err(prompt_error)?;
        if !picked.is_empty() {
            let names: Vec<&str> = picked
                .iter()
                .map(|&i| CATALOG.get(i).map_or("Echo", |e| e.display_name))
                .collect();
            eprintln!(
                "{} {} · {}",
                ui::err_green("✔"),
                ui::err_bold("Providers"),
                names.join(", ")
            );
            break picked;
        }
        eprintln!("{}", ui::err_dim("Pick at least one (Echo needs no key)."));
    };

    let mut providers = Vec::new();
    for index in picked {
        let Some(entry) = CATALOG.get(index) else {
            providers.push(echo_choice());
            continue;
        };
        let mut chosen = catalog_choice(entry);
        match entry.key_env {
            Some(var) => match known_key(var, existing) {
                Some(key) => {
                    eprintln!("  {} using {var} from the environment", ui::green("✓"));
                    chosen.key = Some(key);
                }
                None => {
                    let key = Password::with_theme(&theme)
                        .with_prompt(format!(
                            "{} API key ({var}; empty to skip {})",
                            entry.display_name, entry.display_name
                        ))
                        .allow_empty_password(true)
                        .interact()
                        .map_err(prompt_error)?;
                    if key.trim().is_empty() {
                        eprintln!(
                            "  {} skipping {}: set {var} and run `apx init --force` to add it",
                            ui::yellow("!"),
                            entry.display_name
                        );
                        continue;
                    }
                    chosen.key = Some(key.trim().to_string());
                }
            },
            None => {
                let url: String = Input::with_theme(&theme)
                    .with_prompt(format!("{} base URL", entry.display_name))
                    .default(entry.base_url.to_string())
                    .interact_text()
                    .map_err(prompt_error)?;
                chosen.base_url = Some(url);
            }
        }
        chosen.model = Input::with_theme(&theme)
            .with_prompt(format!("{} model", entry.display_name))
            .default(chosen.model.clone())
            .interact_text()
            .map_err(prompt_error)?;
        providers.push(chosen);
    }
    if providers.is_empty() {
        eprintln!(
            "  {} no provider left: configuring the built-in echo model",
            ui::yellow("!")
        );
        providers.push(echo_choice());
    }

    let default_listen = parse_listen(args)?;
    let port: u16 = Input::with_theme(&theme)
        .with_prompt("Port for the gateway (on 127.0.0.1)")
        .default(default_listen.map_or_else(free_port, |a| a.port()))
        .validate_with(|port: &u16| -> Result<(), String> {
            if *port == 0 {
                return Err("pick a port from 1 to 65535".to_string());
            }
            Ok(())
        })
        .interact_text()
        .map_err(prompt_error)?;
    let host = default_listen.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    let listen = SocketAddr::new(host, port);

    let modes = [
        CaptureArg::Auto,
        CaptureArg::Ebpf,
        CaptureArg::Userspace,
        CaptureArg::Off,
    ];
    let labels = [
        "auto       eBPF where the kernel allows it, else user space (recommended)",
        "ebpf       eBPF only; refuse to start without it",
        "userspace  records made by the gateway process",
        "off        no request records",
    ];
    let preset = modes
        .iter()
        .position(|m| Some(*m) == args.capture)
        .unwrap_or(0);
    let capture = Select::with_theme(&theme)
        .with_prompt("Request capture (`apx doctor` shows what this machine supports)")
        .items(labels)
        .default(preset)
        .report(false)
        .interact()
        .map_err(prompt_error)?;
    eprintln!(
        "{} {} · {}",
        ui::err_green("✔"),
        ui::err_bold("Request capture"),
        modes[capture].name()
    );

    let retention: String = Input::with_theme(&theme)
        .with_prompt("Keep request records for")
        .default(args.retention.clone().unwrap_or_else(|| "30d".to_string()))
        .validate_with(|text: &String| check_retention(text))
        .interact_text()
        .map_err(prompt_error)?;

    let mut answers = Answers {
        providers,
        listen,
        capture: modes[capture],
        retention,
    };
    apply_overrides(args, &mut answers)?;
    Ok(answers)
}

/// Everything `apx init` writes, rendered.
struct Rendered {
    config: String,
    env: String,
    env_vars: EnvVars,
    unit: Option<String>,
    state_dir: PathBuf,
}

fn render(
    answers: &Answers,
    files: &Files,
    state_dir: &Path,
    existing: &EnvVars,
) -> anyhow::Result<Rendered> {
    let plan = ConfigPlan {
        listen: answers.listen.to_string(),
        providers: answers
            .providers
            .iter()
            .map(|c| ProviderPlan {
                name: c.name.clone(),
                title: c.title.clone(),
                comment: (c.kind == ECHO).then(|| {
                    "A test model built into apx: it streams your prompt back, word by word, through the full gateway path (auth, routing, streaming, logging). No upstream, no key.".to_string()
                }),
                kind: c.kind.clone(),
                base_url: c.base_url.clone(),
                api_key_env: c.key_env.clone(),
            })
            .collect(),
        models: answers
            .providers
            .iter()
            .map(|c| ModelPlan {
                name: c.model.clone(),
                provider: c.name.clone(),
                upstream_model: None,
            })
            .collect(),
        state_dir: state_dir.to_path_buf(),
        capture: answers.capture.name().to_string(),
        retention: answers.retention.clone(),
        env_file: files.env.clone(),
    };
    let config = templates::render_config(&plan)?;
    let mut env_vars = existing.clone();
    for chosen in &answers.providers {
        if let (Some(var), Some(key)) = (&chosen.key_env, &chosen.key) {
            env_vars.insert(var.clone(), key.clone());
        }
    }
    let env = templates::render_env(&env_vars)?;
    // Prove the result loads exactly as the gateway will load it.
    let lookup = |name: &str| {
        env_vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    };
    let parsed = apx_gateway::config::parse(&files.config, &config, &lookup).map_err(|err| {
        anyhow::anyhow!(
            "the rendered config does not load (a bug in apx init or its templates): {err}"
        )
    })?;
    let unit = match std::env::current_exe() {
        Ok(exe) => templates::render_unit(&UnitPlan {
            exe,
            config: files.config.clone(),
            env_file: files.env.clone(),
            system: paths::is_root(),
            stop_timeout_secs: parsed.limits.shutdown_grace.0.as_secs() + 10,
        })
        .map_err(|err| {
            eprintln!(
                "{} no systemd unit: {err}; `apx start` runs a managed daemon",
                ui::err_red("!")
            );
        })
        .ok(),
        Err(err) => {
            eprintln!(
                "{} no systemd unit: cannot find the apx binary ({err})",
                ui::err_red("!")
            );
            None
        }
    };
    Ok(Rendered {
        config,
        env,
        env_vars,
        unit,
        state_dir: parsed.state_dir,
    })
}

fn mask_secrets(env: &str, vars: &EnvVars) -> String {
    let mut text = env.to_string();
    for value in vars.values().filter(|v| v.len() >= 4) {
        let quoted = crate::envfile::quote(value);
        let shown: String = value.chars().take(4).collect();
        text = text.replace(&quoted, &format!("\"{shown}…\""));
    }
    text
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    let files = local.files.clone();
    if local.text.is_some() && !args.force && !args.dry_run {
        return Err(Failure::new(
            exit::FAILURE,
            format!("a config already exists at {}", files.config.display()),
        )
        .hint("`apx init --force` replaces it (the old one is kept as a backup); `apx start` uses it as is")
        .into());
    }
    let existing = local.env_strict().cloned().unwrap_or_default();
    let interactive = !args.yes && ui::stdin_is_tty() && ui::stderr_is_tty();
    let answers = if interactive {
        answers_from_wizard(&args, &existing)?
    } else {
        answers_from_flags(&args, &existing)?
    };
    if answers.providers.iter().any(|c| c.kind == ECHO) && !echo_available() {
        return Err(Failure::new(
            exit::FAILURE,
            "this gateway build has no built-in echo provider",
        )
        .hint("configure a real provider: `apx init --provider openai` with OPENAI_API_KEY set")
        .into());
    }
    let state_dir = args
        .state_dir
        .clone()
        .map(|dir| std::path::absolute(&dir).unwrap_or(dir))
        .unwrap_or_else(apx_gateway::config::default_state_dir);
    let rendered = render(&answers, &files, &state_dir, &existing)?;

    if args.dry_run {
        println!("# {}\n{}", files.config.display(), rendered.config);
        println!(
            "# {} (mode 0600; secrets masked)\n{}",
            files.env.display(),
            mask_secrets(&rendered.env, &rendered.env_vars)
        );
        if let Some(unit) = &rendered.unit {
            println!("# {}\n{unit}", files.unit_copy.display());
        }
        return Ok(());
    }

    if local.text.is_some() {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let backup = PathBuf::from(format!("{}.bak-{stamp}", files.config.display()));
        std::fs::copy(&files.config, &backup)
            .with_context(|| format!("cannot back up the old config to {}", backup.display()))?;
        println!(
            "{} kept the old config as {}",
            ui::green("✓"),
            backup.display()
        );
    }
    paths::write_atomic(&files.config, rendered.config.as_bytes(), 0o644)?;
    println!(
        "{} wrote {} (gateway config)",
        ui::green("✓"),
        files.config.display()
    );
    paths::write_atomic(&files.env, rendered.env.as_bytes(), 0o600)?;
    let secrets = rendered
        .env_vars
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{} wrote {} (secrets, mode 0600{})",
        ui::green("✓"),
        files.env.display(),
        if secrets.is_empty() {
            String::new()
        } else {
            format!(": {secrets}")
        }
    );
    if let Some(unit) = &rendered.unit {
        install_unit(unit, &files, args.no_systemd)?;
    }
    let key = first_key(&rendered.state_dir, &files, &args.key_name)?;
    summary(&answers, key.as_deref(), &files);
    Ok(())
}

fn install_unit(unit: &str, files: &Files, no_systemd: bool) -> anyhow::Result<()> {
    paths::write_atomic(&files.unit_copy, unit.as_bytes(), 0o644)?;
    let root = paths::is_root();
    if no_systemd || !service::systemd_usable() {
        let why = if no_systemd {
            "--no-systemd"
        } else if service::systemd_is_init() {
            "no systemd user instance runs for this session"
        } else {
            "systemd is not the running init here"
        };
        println!(
            "{} wrote {} (systemd unit; {why}, so `apx start` runs a managed daemon)",
            ui::green("✓"),
            files.unit_copy.display()
        );
        return Ok(());
    }
    let Some(target) = paths::systemd_unit_path(root) else {
        return Ok(());
    };
    paths::write_atomic(&target, unit.as_bytes(), 0o644)?;
    let enabled = service::systemctl(root, &["daemon-reload"])
        .and_then(|_| service::systemctl(root, &["enable", service::UNIT_NAME]));
    match enabled {
        Ok(_) => {
            println!(
                "{} installed and enabled {} (systemd{})",
                ui::green("✓"),
                target.display(),
                if root { "" } else { ", user unit" }
            );
            if !root {
                println!(
                    "  {}",
                    ui::dim(
                        "A user unit runs while you are logged in; `loginctl enable-linger` keeps it running after logout."
                    )
                );
            }
        }
        Err(err) => println!(
            "{} installed {} but could not enable it: {err:#}",
            ui::yellow("!"),
            target.display()
        ),
    }
    Ok(())
}

/// Creates the first gateway key, or keeps the CLI's key when the store
/// still accepts it. Returns the new key, to be shown once.
fn first_key(state_dir: &Path, files: &Files, name: &str) -> anyhow::Result<Option<String>> {
    let store_path = state_dir.join("state.db");
    let store = KeyStore::open(&store_path).map_err(|err| {
        anyhow::anyhow!("cannot open the key store {}: {err}", store_path.display())
    })?;
    if let Some(existing) = paths::read_optional(&files.client_key)? {
        let hash = KeyHash::of(existing.trim());
        let active = store
            .active()
            .map_err(|err| anyhow::anyhow!("cannot read the key store: {err}"))?;
        if let Some(key) = active.iter().find(|k| k.hash == hash) {
            println!(
                "{} kept the CLI's gateway key `{}` ({}) in {}",
                ui::green("✓"),
                key.name,
                key.id,
                files.client_key.display()
            );
            return Ok(None);
        }
    }
    let mut attempt = 1;
    let (stored, key) = loop {
        let candidate = if attempt == 1 {
            name.to_string()
        } else {
            format!("{name}-{attempt}")
        };
        match store.create(&candidate, None) {
            Ok(created) => break created,
            Err(StoreError::DuplicateKeyName(_)) if attempt < 100 => attempt += 1,
            Err(err) => return Err(anyhow::anyhow!("cannot create the first key: {err}")),
        }
    };
    paths::write_atomic(&files.client_key, format!("{key}\n").as_bytes(), 0o600)?;
    println!(
        "{} created gateway key `{}` ({}), saved for this CLI in {} (mode 0600)",
        ui::green("✓"),
        stored.name,
        stored.id,
        files.client_key.display()
    );
    Ok(Some(key))
}

fn summary(answers: &Answers, key: Option<&str>, files: &Files) {
    if let Some(key) = key {
        println!("\n  {}\n", ui::bold(key));
        println!(
            "  {}",
            ui::dim(
                "This key is shown only once. Clients send it as `Authorization: Bearer <key>` or `x-api-key: <key>`."
            )
        );
    }
    println!();
    for chosen in &answers.providers {
        if chosen.kind == ECHO {
            println!(
                "  {} {} — built in, streams your prompt back; no upstream is called",
                ui::bold("echo"),
                ui::yellow("(test model)"),
            );
        } else {
            println!(
                "  {} — {} via {}",
                ui::bold(&chosen.model),
                chosen.title,
                chosen.base_url.as_deref().unwrap_or("-")
            );
        }
    }
    if answers.providers.iter().all(|c| c.kind == ECHO) {
        println!(
            "\n  {}",
            ui::dim(
                "Add a real provider: `export OPENAI_API_KEY=...` (or another) and `apx init --force --provider openai`."
            )
        );
    }
    println!(
        "\n  Listening on http://{} once started. Config: {}",
        answers.listen,
        files.config.display()
    );
    // The first provider's name picks its first model in its own API.
    let first = answers.providers.first().map_or(ECHO, |c| c.name.as_str());
    println!(
        "\nNext: {}",
        ui::bold(&format!("apx start && apx call {first} \"Hello\""))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Args {
        Args {
            yes: true,
            providers: Vec::new(),
            models: Vec::new(),
            base_urls: Vec::new(),
            port: Some(9999),
            listen: None,
            capture: None,
            retention: None,
            state_dir: None,
            key_name: "default".to_string(),
            force: false,
            no_systemd: true,
            dry_run: false,
        }
    }

    #[test]
    fn flags_pick_providers_models_and_keys() {
        let mut existing = EnvVars::new();
        existing.insert("ANTHROPIC_API_KEY".to_string(), "sk-ant-x".to_string());
        let mut a = args();
        a.providers = vec!["anthropic".to_string(), "ollama".to_string()];
        a.models = vec!["ollama=qwen2.5".to_string()];
        a.base_urls = vec!["ollama=http://10.0.0.5:11434/v1".to_string()];
        a.capture = Some(CaptureArg::Userspace);
        let answers = answers_from_flags(&a, &existing).unwrap();
        assert_eq!(answers.providers.len(), 2);
        assert_eq!(answers.providers[0].key.as_deref(), Some("sk-ant-x"));
        assert_eq!(answers.providers[1].model, "qwen2.5");
        assert_eq!(
            answers.providers[1].base_url.as_deref(),
            Some("http://10.0.0.5:11434/v1")
        );
        assert_eq!(answers.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(answers.capture, CaptureArg::Userspace);
    }

    #[test]
    fn flag_mistakes_are_usage_errors() {
        let existing = EnvVars::new();
        let mut a = args();
        a.providers = vec!["bedrock".to_string()];
        let err = answers_from_flags(&a, &existing).unwrap_err();
        assert_eq!(err.downcast_ref::<Failure>().unwrap().code, exit::USAGE);
        let mut a = args();
        a.providers = vec!["ollama".to_string()];
        a.models = vec!["openai=gpt-4o".to_string()];
        assert!(answers_from_flags(&a, &existing).is_err());
        let mut a = args();
        a.retention = Some("forever".to_string());
        assert!(answers_from_flags(&a, &existing).is_err());
    }

    #[test]
    fn a_provider_without_its_key_is_refused_without_a_terminal() {
        // A variable name no environment sets.
        let existing = EnvVars::new();
        let mut a = args();
        a.providers = vec!["together".to_string()];
        if std::env::var_os("TOGETHER_API_KEY").is_none() {
            let err = answers_from_flags(&a, &existing).unwrap_err();
            let failure = err.downcast_ref::<Failure>().unwrap();
            assert_eq!(failure.code, exit::USAGE);
            assert!(failure.message.contains("TOGETHER_API_KEY"));
        }
    }

    #[test]
    fn rendering_merges_secrets_and_validates() {
        let mut existing = EnvVars::new();
        existing.insert("OTHER".to_string(), "kept".to_string());
        existing.insert("MISTRAL_API_KEY".to_string(), "m-key".to_string());
        let mut a = args();
        a.providers = vec!["mistral".to_string()];
        let answers = answers_from_flags(&a, &existing).unwrap();
        let files = Files::of(Path::new("/tmp/apx-init-test/apx.toml"));
        let rendered = render(
            &answers,
            &files,
            Path::new("/tmp/apx-init-test/state"),
            &existing,
        )
        .unwrap();
        assert_eq!(rendered.env_vars["OTHER"], "kept");
        assert_eq!(rendered.env_vars["MISTRAL_API_KEY"], "m-key");
        assert!(rendered.config.contains("api_key = \"${MISTRAL_API_KEY}\""));
        assert!(
            !rendered.config.contains("m-key"),
            "secret leaked into the config"
        );
        assert_eq!(rendered.state_dir, Path::new("/tmp/apx-init-test/state"));
        let masked = mask_secrets(&rendered.env, &rendered.env_vars);
        assert!(!masked.contains("m-key"));
    }
}
