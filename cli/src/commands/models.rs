//! `apx models`: the models the running gateway serves.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use crate::client::{self, Client};
use crate::exit::{self, Failure};
use crate::local::{self, Local};
use crate::ui;

pub const HELP: &str = "Examples:
  apx models
  apx models --json | jq -r '.data[].id'

Asks the running gateway (GET /v1/models). When it is not running, the
models in the config are listed instead and the exit code is 3.";

#[derive(clap::Args)]
pub struct Args {
    /// Print the gateway's JSON listing.
    #[arg(long)]
    json: bool,
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    let local = Local::discover(config_path)?;
    let config = local.config_lenient()?;
    let addr = local::gateway_addr(config.listen)?;
    let client = Client::new(addr, local.client_key()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let answer = runtime.block_on(client.get_json("/v1/models"));
    let (status, body) = match answer {
        Ok(answer) => answer,
        Err(err) => {
            let Some(failure) = err.downcast_ref::<Failure>() else {
                return Err(err);
            };
            if failure.code != exit::NOT_RUNNING {
                return Err(err);
            }
            eprintln!("{} {}", ui::err_red("error:"), failure.message);
            eprintln!(
                "models in {} (served once the gateway runs):",
                config_path.display()
            );
            for model in super::call::models_of(&config) {
                println!("{:<32} {}", model.name, model.provider);
            }
            return Err(Failure::silent(exit::NOT_RUNNING).into());
        }
    };
    if !status.is_success() {
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        return Err(client::answer_failure(status, &bytes, &[]).into());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    let data = body
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if data.is_empty() {
        eprintln!(
            "the gateway serves no models: add [[models]] to {}",
            config_path.display()
        );
        return Ok(());
    }
    let configured = super::call::models_of(&config);
    println!(
        "{}",
        ui::bold(&format!(
            "{:<32} {:<14} {:<10} {}",
            "MODEL", "PROVIDER", "API", "UPSTREAM MODEL"
        ))
    );
    for item in data {
        let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
        let owner = item.get("owned_by").and_then(Value::as_str).unwrap_or("-");
        let info = configured.iter().find(|m| m.name == id);
        let kind = info.map_or("-", |m| m.kind.as_str());
        let upstream = config
            .models
            .iter()
            .find(|m| m.name == id)
            .and_then(|m| m.upstream_model.clone())
            .unwrap_or_else(|| id.to_string());
        println!("{id:<32} {owner:<14} {kind:<10} {upstream}");
    }
    Ok(())
}
