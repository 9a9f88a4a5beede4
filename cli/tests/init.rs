//! `apx init` without a terminal: flags, defaults, files and their modes,
//! refusing to overwrite, backups, and the usage errors.

mod common;

use common::*;

fn echo_available() -> bool {
    apx_gateway::providers::ProviderKind::from_name("echo").is_some()
}

#[test]
fn flags_write_config_env_unit_and_first_key() {
    let home = Home::new("init-flags");
    let port = home.port.to_string();
    let out = home.run_env(
        &[
            "init",
            "--yes",
            "--provider",
            "openai,ollama",
            "--model",
            "ollama=qwen2.5",
            "--port",
            &port,
            "--capture",
            "userspace",
            "--retention",
            "7d",
            "--key-name",
            "laptop",
        ],
        &[("OPENAI_API_KEY", "sk-from-env")],
    );
    assert_ok(&out, "init");
    let stdout = text(&out.stdout);

    // The config loads as the gateway loads it, and holds no secret.
    let config_text = std::fs::read_to_string(home.config()).unwrap();
    assert!(
        !config_text.contains("sk-from-env"),
        "secret in config:\n{config_text}"
    );
    assert!(config_text.contains("api_key = \"${OPENAI_API_KEY}\""));
    let config = apx_gateway::config::parse(&home.config(), &config_text, &|name| {
        (name == "OPENAI_API_KEY").then(|| "x".to_string())
    })
    .unwrap();
    assert_eq!(config.listen.port(), home.port);
    assert_eq!(config.models.len(), 2);
    assert_eq!(config.models[1].name, "qwen2.5");
    assert_eq!(config.logging.capture.name(), "userspace");
    assert_eq!(config.state_dir, home.state_dir());

    // Secrets in a 0600 env file; the unit beside the config.
    let env = std::fs::read_to_string(home.file("apx.env")).unwrap();
    assert!(env.contains("OPENAI_API_KEY=\"sk-from-env\""), "{env}");
    assert_eq!(mode(&home.file("apx.env")), 0o600);
    let unit = std::fs::read_to_string(home.file("apx.service")).unwrap();
    assert!(
        unit.contains(&format!("--config {}", home.config().display())),
        "{unit}"
    );
    assert!(unit.contains(&format!(
        "EnvironmentFile={}",
        home.file("apx.env").display()
    )));

    // The first key: printed once, saved 0600 for the CLI, hash in the store.
    let key = home.client_key();
    assert!(key.starts_with("apx-"));
    assert_eq!(mode(&home.file("client.key")), 0o600);
    assert_eq!(stdout.matches(&key).count(), 1, "{stdout}");
    let store =
        apx_gateway::store::keys::KeyStore::open(&home.state_dir().join("state.db")).unwrap();
    let keys = store.list().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "laptop");
    assert_eq!(keys[0].hash, apx_gateway::auth::KeyHash::of(&key));
    assert!(
        stdout.contains("Next: apx start && apx call openai"),
        "{stdout}"
    );
}

#[test]
fn refuses_to_overwrite_then_force_keeps_a_backup_and_the_key() {
    let home = Home::new("init-force");
    let port = home.port.to_string();
    let args = ["init", "--yes", "--provider", "vllm", "--port", &port];
    assert_ok(&home.run(&args), "first init");
    let first = std::fs::read_to_string(home.config()).unwrap();
    let key = home.client_key();

    let again = home.run(&args);
    assert_code(&again, 1, "second init without --force");
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    assert!(text(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(home.config()).unwrap(), first);

    let mut forced: Vec<&str> = args.to_vec();
    forced.push("--force");
    forced.extend(["--model", "vllm=my-model"]);
    let out = home.run(&forced);
    assert_ok(&out, "init --force");
    let backups: Vec<_> = std::fs::read_dir(home.root.join("etc"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("apx.toml.bak-"))
        .collect();
    assert_eq!(backups.len(), 1);
    assert_eq!(std::fs::read_to_string(backups[0].path()).unwrap(), first);
    assert!(
        std::fs::read_to_string(home.config())
            .unwrap()
            .contains("my-model")
    );
    // The CLI's key is still valid, so it is kept rather than replaced.
    assert_eq!(home.client_key(), key);
    assert!(text(&out.stdout).contains("kept the CLI's gateway key"));
}

#[test]
fn missing_provider_key_without_a_terminal_is_a_usage_error() {
    let home = Home::new("init-nokey");
    let out = home.run(&["init", "--yes", "--provider", "anthropic"]);
    assert_code(&out, 2, "init without ANTHROPIC_API_KEY");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ANTHROPIC_API_KEY is not set"), "{stderr}");
    assert!(stderr.contains("export ANTHROPIC_API_KEY"), "{stderr}");
    assert!(!home.config().exists());

    let out = home.run(&["init", "--yes", "--provider", "bedrock"]);
    assert_code(&out, 2, "unknown provider");
    assert!(text(&out.stderr).contains("unknown provider `bedrock`"));
    let out = home.run(&["init", "--yes", "--listen", "nonsense"]);
    assert_code(&out, 2, "bad --listen");
}

#[test]
fn dry_run_prints_and_masks_without_writing() {
    let home = Home::new("init-dry");
    let out = home.run_env(
        &[
            "init",
            "--yes",
            "--dry-run",
            "--provider",
            "groq",
            "--port",
            "9123",
        ],
        &[("GROQ_API_KEY", "gsk-secret-value")],
    );
    assert_ok(&out, "init --dry-run");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("[providers.groq]"), "{stdout}");
    assert!(stdout.contains("GROQ_API_KEY=\"gsk-…\""), "{stdout}");
    assert!(!stdout.contains("gsk-secret-value"));
    assert!(stdout.contains("ExecStart="));
    assert!(!home.config().exists());
}

#[test]
fn no_credentials_gives_the_echo_model() {
    let home = Home::new("init-echo");
    let port = home.port.to_string();
    let out = home.run(&["init", "--yes", "--port", &port]);
    if !echo_available() {
        // Until the gateway has the built-in echo provider, init says so.
        assert_code(&out, 1, "init with echo on a gateway without it");
        assert!(text(&out.stderr).contains("echo"));
        return;
    }
    assert_ok(&out, "init with no credentials");
    let config = std::fs::read_to_string(home.config()).unwrap();
    assert!(config.contains("[providers.echo]"), "{config}");
    assert!(config.contains("kind = \"echo\""));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("test model"), "{stdout}");
    assert!(
        stdout.contains("apx init --force --provider openai"),
        "{stdout}"
    );
}
