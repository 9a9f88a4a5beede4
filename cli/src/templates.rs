//! The files `apx init` writes, rendered from `templates/` (embedded in the
//! binary) with the [`template`](crate::template) language.

use std::path::{Path, PathBuf};

use crate::envfile::{self, EnvVars};
use crate::template::{self, Context, TemplateError};

pub const CONFIG_TEMPLATE: &str = include_str!("../../templates/apx.toml");
pub const ENV_TEMPLATE: &str = include_str!("../../templates/apx.env");
pub const UNIT_TEMPLATE: &str = include_str!("../../templates/apx.service");

/// Everything the config file says.
#[derive(Clone, Debug)]
pub struct ConfigPlan {
    pub listen: String,
    pub providers: Vec<ProviderPlan>,
    pub models: Vec<ModelPlan>,
    pub state_dir: PathBuf,
    pub capture: String,
    pub retention: String,
    /// Mentioned in the header comment, so a reader knows where secrets are.
    pub env_file: PathBuf,
}

#[derive(Clone, Debug)]
pub struct ProviderPlan {
    pub name: String,
    /// Heading comment, e.g. "OpenAI".
    pub title: String,
    /// A second comment line, e.g. what the echo provider is.
    pub comment: Option<String>,
    pub kind: String,
    pub base_url: Option<String>,
    /// The environment variable holding the key, written as `${NAME}`.
    pub api_key_env: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ModelPlan {
    pub name: String,
    pub provider: String,
    pub upstream_model: Option<String>,
}

pub fn render_config(plan: &ConfigPlan) -> Result<String, TemplateError> {
    let providers = plan
        .providers
        .iter()
        .map(|p| {
            Context::new()
                .text("name", &p.name)
                .text("title", &p.title)
                .maybe("comment", p.comment.clone())
                .text("kind", &p.kind)
                .maybe("base_url", p.base_url.clone())
                .maybe(
                    "api_key_ref",
                    p.api_key_env.as_ref().map(|v| format!("${{{v}}}")),
                )
        })
        .collect();
    let models = plan
        .models
        .iter()
        .map(|m| {
            Context::new()
                .text("name", &m.name)
                .text("provider", &m.provider)
                .maybe("upstream_model", m.upstream_model.clone())
        })
        .collect();
    let context = Context::new()
        .text("listen", &plan.listen)
        .list("providers", providers)
        .list("models", models)
        .text("state_dir", plan.state_dir.to_string_lossy())
        .text("capture", &plan.capture)
        .text("retention", &plan.retention)
        .text("env_file", plan.env_file.to_string_lossy());
    template::render(CONFIG_TEMPLATE, &context, &template::toml_escape)
}

/// The env file with `vars` (names must be valid variable names).
pub fn render_env(vars: &EnvVars) -> Result<String, TemplateError> {
    let mut items = Vec::new();
    for (name, value) in vars {
        if !envfile::valid_name(name) {
            return Err(TemplateError(format!(
                "`{name}` is not a valid environment variable name"
            )));
        }
        items.push(
            Context::new()
                .text("name", name)
                .text("value", envfile::quote(value)),
        );
    }
    let context = Context::new().list("vars", items);
    template::render(ENV_TEMPLATE, &context, &template::verbatim)
}

/// What the systemd unit runs.
#[derive(Clone, Debug)]
pub struct UnitPlan {
    pub exe: PathBuf,
    pub config: PathBuf,
    pub env_file: PathBuf,
    /// System unit (root) or user unit.
    pub system: bool,
    pub stop_timeout_secs: u64,
}

pub fn render_unit(plan: &UnitPlan) -> Result<String, TemplateError> {
    for path in [&plan.exe, &plan.config, &plan.env_file] {
        check_unit_path(path)?;
    }
    let context = Context::new()
        .text("exe", plan.exe.to_string_lossy())
        .text("config", plan.config.to_string_lossy())
        .text("env_file", plan.env_file.to_string_lossy())
        .text("stop_timeout_secs", plan.stop_timeout_secs.to_string())
        .flag("system", plan.system);
    template::render(UNIT_TEMPLATE, &context, &template::systemd_escape)
}

/// systemd reads `EnvironmentFile=` to the end of the line without quoting
/// rules, so paths there must be plain.
fn check_unit_path(path: &Path) -> Result<(), TemplateError> {
    let text = path.to_string_lossy();
    if !path.is_absolute() || text.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(TemplateError(format!(
            "{text} cannot be used in a systemd unit (it must be absolute, without spaces or quotes)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apx_gateway::providers::catalog::CATALOG;

    fn plan_for(providers: Vec<ProviderPlan>, models: Vec<ModelPlan>) -> ConfigPlan {
        ConfigPlan {
            listen: "127.0.0.1:8080".to_string(),
            providers,
            models,
            state_dir: PathBuf::from("/var/lib/apx"),
            capture: "auto".to_string(),
            retention: "30d".to_string(),
            env_file: PathBuf::from("/etc/apx/apx.env"),
        }
    }

    fn parse(text: &str) -> Result<apx_gateway::Config, apx_gateway::ConfigError> {
        apx_gateway::config::parse(Path::new("/etc/apx/apx.toml"), text, &|name| {
            Some(format!("value-of-{name}"))
        })
    }

    #[test]
    fn every_catalog_provider_renders_a_valid_config() {
        for entry in CATALOG {
            let plan = plan_for(
                vec![ProviderPlan {
                    name: entry.name.to_string(),
                    title: entry.display_name.to_string(),
                    comment: None,
                    kind: entry.kind.name().to_string(),
                    base_url: Some(entry.base_url.to_string()),
                    api_key_env: entry.key_env.map(str::to_string),
                }],
                vec![ModelPlan {
                    name: entry.default_model.to_string(),
                    provider: entry.name.to_string(),
                    upstream_model: None,
                }],
            );
            let text = render_config(&plan).unwrap();
            let config = parse(&text).unwrap_or_else(|err| panic!("{}: {err}\n{text}", entry.name));
            assert_eq!(config.providers.len(), 1);
            assert_eq!(config.providers[0].name, entry.name);
            assert_eq!(config.providers[0].kind, entry.kind);
            assert_eq!(config.models[0].name, entry.default_model);
            assert_eq!(config.state_dir, Path::new("/var/lib/apx"));
            match entry.key_env {
                Some(var) => {
                    assert!(
                        text.contains(&format!("api_key = \"${{{var}}}\"")),
                        "{text}"
                    );
                    let key = config.providers[0].api_key.as_ref().unwrap();
                    assert_eq!(key.expose(), format!("value-of-{var}"));
                }
                None => assert!(config.providers[0].api_key.is_none()),
            }
        }
    }

    #[test]
    fn all_catalog_providers_together_and_odd_values() {
        let providers = CATALOG
            .iter()
            .map(|e| ProviderPlan {
                name: e.name.to_string(),
                title: e.display_name.to_string(),
                comment: Some("a \"quoted\" note".to_string()),
                kind: e.kind.name().to_string(),
                base_url: Some(e.base_url.to_string()),
                api_key_env: e.key_env.map(str::to_string),
            })
            .collect();
        let models = CATALOG
            .iter()
            .map(|e| ModelPlan {
                name: format!("{}-model", e.name),
                provider: e.name.to_string(),
                upstream_model: Some(e.default_model.to_string()),
            })
            .collect();
        let mut plan = plan_for(providers, models);
        plan.state_dir = PathBuf::from("/srv/a \"b\"\\c");
        plan.capture = "userspace".to_string();
        plan.retention = "7d".to_string();
        let text = render_config(&plan).unwrap();
        let config = parse(&text).unwrap();
        assert_eq!(config.providers.len(), CATALOG.len());
        assert_eq!(config.models.len(), CATALOG.len());
        assert_eq!(config.state_dir, Path::new("/srv/a \"b\"\\c"));
        assert_eq!(config.logging.capture.name(), "userspace");
        assert_eq!(config.logging.retention.0.as_secs(), 7 * 86_400);
        assert_eq!(
            config.models[0].upstream_model.as_deref(),
            Some(CATALOG[0].default_model)
        );
    }

    /// The built-in echo provider needs no base URL and no key; skipped
    /// while the gateway library does not know `kind = "echo"` yet.
    #[test]
    fn echo_setup_renders_a_valid_config() {
        if apx_gateway::providers::ProviderKind::from_name("echo").is_none() {
            eprintln!("skipped: this gateway build has no echo provider");
            return;
        }
        let plan = plan_for(
            vec![ProviderPlan {
                name: "echo".to_string(),
                title: "Echo".to_string(),
                comment: Some("built in".to_string()),
                kind: "echo".to_string(),
                base_url: None,
                api_key_env: None,
            }],
            vec![ModelPlan {
                name: "echo".to_string(),
                provider: "echo".to_string(),
                upstream_model: None,
            }],
        );
        let text = render_config(&plan).unwrap();
        let config = parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        assert_eq!(config.models[0].name, "echo");
    }

    #[test]
    fn env_file_round_trips_and_rejects_bad_names() {
        let mut vars = EnvVars::new();
        vars.insert("OPENAI_API_KEY".to_string(), "sk-\"odd\" $x".to_string());
        let text = render_env(&vars).unwrap();
        assert_eq!(envfile::parse(&text).unwrap(), vars);
        assert!(text.contains("mode 0600"));
        let empty = render_env(&EnvVars::new()).unwrap();
        assert!(envfile::parse(&empty).unwrap().is_empty());
        assert!(empty.contains("OPENAI_API_KEY=\"sk-...\""));
        vars.insert("BAD NAME".to_string(), "x".to_string());
        assert!(render_env(&vars).is_err());
    }

    #[test]
    fn systemd_unit_runs_serve_with_the_env_file() {
        let plan = UnitPlan {
            exe: PathBuf::from("/usr/local/bin/apx"),
            config: PathBuf::from("/etc/apx/apx.toml"),
            env_file: PathBuf::from("/etc/apx/apx.env"),
            system: true,
            stop_timeout_secs: 40,
        };
        let unit = render_unit(&plan).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/apx serve --config /etc/apx/apx.toml\n"));
        assert!(unit.contains("EnvironmentFile=/etc/apx/apx.env\n"));
        assert!(unit.contains("TimeoutStopSec=40\n"));
        assert!(unit.contains("WantedBy=multi-user.target\n"));
        assert!(!unit.contains("{{"));
        let user = render_unit(&UnitPlan {
            system: false,
            ..plan.clone()
        })
        .unwrap();
        assert!(user.contains("WantedBy=default.target\n"));
        let spaced = UnitPlan {
            config: PathBuf::from("/home/a b/apx.toml"),
            ..plan
        };
        assert!(render_unit(&spaced).is_err());
    }
}
