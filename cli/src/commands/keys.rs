//! `apx keys create | list | revoke`: gateway keys in the state directory's
//! key store. Only hashes are stored; the running gateway re-reads the
//! store within about a second, so a revocation needs no restart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use apx_gateway::config::units::parse_duration;
use apx_gateway::store::StoreError;
use apx_gateway::store::keys::{KeyStore, StoredKey};
use apx_gateway::time::rfc3339;
use serde_json::{Value, json};

use crate::client::Client;
use crate::exit::{self, Failure, fail};
use crate::local::Local;
use crate::ui;

pub const HELP: &str = "Examples:
  apx keys create --name alice
  apx keys create --name ci --expires 30d
  apx keys list
  apx keys revoke alice

Keys are shown once, at creation; the store keeps only their SHA-256.
Revoking takes effect on the running gateway within about a second.";

#[derive(clap::Subcommand)]
pub enum Command {
    /// Issue a new key and print it (once).
    #[command(
        after_help = "Examples:\n  apx keys create --name alice\n  apx keys create --name ci --expires 30d --json"
    )]
    Create {
        /// A unique name for the key's holder or purpose.
        #[arg(long, short)]
        name: String,
        /// Expire the key after this long: 90m, 12h, 30d.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Print JSON (with the key) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys: id, name, prefix, created, expiry and state.
    #[command(
        after_help = "Examples:\n  apx keys list\n  apx keys list --active\n  apx keys list --json"
    )]
    List {
        /// Only keys the gateway accepts now.
        #[arg(long)]
        active: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id or name; the running gateway refuses it within a second.
    #[command(
        after_help = "Examples:\n  apx keys revoke alice\n  apx keys revoke key_3f9a0c1b2d4e"
    )]
    Revoke {
        /// The key's id (`key_…`) or name.
        key: String,
    },
}

pub fn run(config_path: &Path, command: Command) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    let config = local.config_lenient()?;
    let store_path = config.key_store_path();
    let store = KeyStore::open(&store_path).map_err(|err| {
        Failure::new(
            exit::FAILURE,
            format!(
                "cannot open the key store {}: {}",
                store_path.display(),
                store_error(&err)
            ),
        )
        .hint("run as the user that owns the state directory (root for /var/lib/apx)")
    })?;
    let addr = crate::local::gateway_addr(config.listen)?;
    match command {
        Command::Create {
            name,
            expires,
            json,
        } => create(&store, addr, &name, expires.as_deref(), json),
        Command::List { active, json } => list(&store, &config, active, json),
        Command::Revoke { key } => revoke(&store, addr, &key),
    }
}

/// Waits (up to 3 s) until a running gateway accepts (`accepted = true`) or
/// refuses `key`, so that what `apx keys` says is already true when it
/// returns. `None` when no gateway answers at `addr`.
fn settle(addr: SocketAddr, key: &str, accepted: bool) -> Option<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let client = Client::new(addr, Some(key.to_string()));
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let answer = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(2), client.get_json("/v1/models")).await
        });
        let status = match answer {
            Ok(Ok((status, _))) => status,
            _ => return None,
        };
        if status.is_success() == accepted {
            return Some(true);
        }
        if Instant::now() >= deadline {
            return Some(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn store_error(err: &StoreError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn create(
    store: &KeyStore,
    addr: SocketAddr,
    name: &str,
    expires: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() {
        return Err(fail(exit::USAGE, "the key name is empty"));
    }
    let expires_at = match expires {
        None => None,
        Some(text) => {
            let duration = parse_duration(text).map_err(|m| fail(exit::USAGE, m))?;
            if duration.is_zero() {
                return Err(fail(exit::USAGE, "--expires must be longer than 0"));
            }
            Some(SystemTime::now() + duration)
        }
    };
    let (stored, key) = match store.create(name, expires_at) {
        Ok(created) => created,
        Err(StoreError::DuplicateKeyName(_)) => {
            return Err(Failure::new(
                exit::FAILURE,
                format!("a key named `{name}` already exists"),
            )
            .hint(format!(
                "pick another name, or `apx keys revoke {name}` first"
            ))
            .into());
        }
        Err(err) => return Err(fail(exit::FAILURE, store_error(&err))),
    };
    // The gateway picks new keys up within a second; wait for it so the key
    // works as soon as this command returns.
    let live = settle(addr, &key, true);
    if json {
        let mut value = key_json(&stored, SystemTime::now());
        value["key"] = json!(key);
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{key}");
    eprintln!(
        "{} key {} ({}) created{}. It is shown only this once: store it now.",
        ui::err_bold("✓"),
        stored.name,
        stored.id,
        match stored.expires_at {
            Some(at) => format!(", expires {}", rfc3339(at)),
            None => String::new(),
        }
    );
    if live == Some(false) {
        eprintln!(
            "{} the running gateway does not accept the key yet; check `apx status` and its log",
            ui::err_red("!")
        );
    }
    eprintln!(
        "{}",
        ui::err_dim(
            "Use it as `Authorization: Bearer <key>` or `x-api-key: <key>`, or export APX_API_KEY for `apx call`."
        )
    );
    Ok(())
}

fn state(key: &StoredKey, now: SystemTime) -> &'static str {
    if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn key_json(key: &StoredKey, now: SystemTime) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "hash": key.hash.to_string(),
        "created_at": rfc3339(key.created_at),
        "expires_at": key.expires_at.map(rfc3339),
        "revoked_at": key.revoked_at.map(rfc3339),
        "state": state(key, now),
        "source": "store",
    })
}

fn list(
    store: &KeyStore,
    config: &apx_gateway::Config,
    active_only: bool,
    json: bool,
) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let keys = store
        .list()
        .map_err(|err| fail(exit::FAILURE, store_error(&err)))?;
    let keys: Vec<&StoredKey> = keys
        .iter()
        .filter(|k| !active_only || k.is_active(now))
        .collect();
    if json {
        let mut items: Vec<Value> = keys.iter().map(|k| key_json(k, now)).collect();
        for key in &config.keys {
            items.push(json!({
                "id": format!("config:{}", key.name),
                "name": key.name,
                "hash": key.hash.to_string(),
                "state": "active",
                "source": "config",
            }));
        }
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    if keys.is_empty() && config.keys.is_empty() {
        eprintln!("no keys yet: create one with `apx keys create --name NAME`");
        return Ok(());
    }
    println!(
        "{}",
        ui::bold(&format!(
            "{:<17} {:<20} {:<9} {:<20} {:<20} {}",
            "ID", "NAME", "PREFIX", "CREATED", "EXPIRES", "STATE"
        ))
    );
    for key in keys {
        let state_text = match state(key, now) {
            "active" => ui::green("active"),
            other => ui::dim(other),
        };
        println!(
            "{:<17} {:<20} {:<9} {:<20} {:<20} {}",
            key.id,
            key.name,
            format!("{}…", key.prefix),
            rfc3339(key.created_at),
            key.expires_at.map_or_else(|| "never".to_string(), rfc3339),
            state_text
        );
    }
    for key in &config.keys {
        println!(
            "{:<17} {:<20} {:<9} {:<20} {:<20} {}",
            format!("config:{}", key.name),
            key.name,
            "-",
            "(config file)",
            "never",
            ui::green("active")
        );
    }
    Ok(())
}

/// The running gateway's key-ring reload counter (`/apx/status`), `None`
/// when no gateway answers.
fn key_reloads(addr: SocketAddr) -> Option<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let client = Client::new(addr, None);
    let answer = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), client.get_json("/apx/status")).await
    });
    match answer {
        Ok(Ok((status, body))) if status.is_success() => body.get("key_reloads")?.as_u64(),
        _ => None,
    }
}

fn revoke(store: &KeyStore, addr: SocketAddr, key: &str) -> anyhow::Result<()> {
    let reloads_before = key_reloads(addr);
    match store.revoke(key) {
        Ok(revoked) => {
            // Only the hash is stored, so the refusal cannot be observed
            // with the key itself: wait until the gateway reloaded its keys.
            let running = reloads_before.is_some();
            if let Some(before) = reloads_before {
                let spinner = ui::spinner("waiting for the running gateway to reload its keys");
                let deadline = Instant::now() + Duration::from_secs(3);
                while key_reloads(addr).is_some_and(|now| now <= before)
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                spinner.finish_and_clear();
            }
            println!(
                "{} revoked key {} ({}){}",
                ui::green("✓"),
                revoked.name,
                revoked.id,
                if running {
                    "; the running gateway refuses it now"
                } else {
                    "; the gateway refuses it from its next start"
                }
            );
            Ok(())
        }
        Err(StoreError::NoSuchKey(_)) => Err(Failure::new(
            exit::FAILURE,
            format!("no key with id or name `{key}`"),
        )
        .hint("`apx keys list` shows the keys")
        .into()),
        Err(err) => Err(fail(exit::FAILURE, store_error(&err))),
    }
}
