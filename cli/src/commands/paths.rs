//! `apx paths`: where the files of this installation are.

use std::path::Path;

use serde_json::json;

use crate::exit::{self, fail};
use crate::local::Local;
use crate::paths;
use crate::service::{self, Daemon};

#[derive(clap::Args)]
pub struct Args {
    /// Print only this path (config, env_file, client_key, unit_copy,
    /// state_dir, key_store, log_store, pidfile, daemon_log, systemd_unit,
    /// binary), for scripts.
    name: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    let state_dir = local.state_dir();
    let daemon = Daemon::of(&state_dir);
    let unit = paths::systemd_unit_path(paths::is_root());
    let exe = std::env::current_exe().ok();
    let rows = [
        ("config", Some(local.files.config.clone())),
        ("env_file", Some(local.files.env.clone())),
        ("client_key", Some(local.files.client_key.clone())),
        ("unit_copy", Some(local.files.unit_copy.clone())),
        ("state_dir", Some(state_dir.clone())),
        ("key_store", Some(state_dir.join("state.db"))),
        ("log_store", Some(state_dir.join("logs.db"))),
        ("pidfile", Some(daemon.pidfile.clone())),
        ("daemon_log", Some(daemon.log.clone())),
        ("systemd_unit", unit),
        ("binary", exe),
    ];
    if let Some(name) = &args.name {
        let found = rows.iter().find(|(n, _)| n == name).ok_or_else(|| {
            let names: Vec<&str> = rows.iter().map(|(n, _)| *n).collect();
            fail(
                exit::USAGE,
                format!("no path named `{name}` (known: {})", names.join(", ")),
            )
        })?;
        if let Some(path) = &found.1 {
            println!("{}", path.display());
        }
        return Ok(());
    }
    if args.json {
        let mut map = serde_json::Map::new();
        for (name, path) in &rows {
            map.insert(
                (*name).to_string(),
                json!(path.as_ref().map(|p| p.display().to_string())),
            );
        }
        map.insert(
            "systemd_is_init".to_string(),
            json!(service::systemd_is_init()),
        );
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    for (name, path) in rows {
        let Some(path) = path else { continue };
        let mark = if path.exists() {
            ""
        } else {
            " (not there yet)"
        };
        println!("{:<13} {}{mark}", name, path.display());
    }
    Ok(())
}
