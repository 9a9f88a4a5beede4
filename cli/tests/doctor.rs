//! `apx doctor` on this machine and with its probes pointed elsewhere.

mod common;

use common::*;
use serde_json::Value;

fn doctor_json(home: &Home, env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let out = home.run_env(&["doctor", "--json"], env);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", text(&out.stdout)));
    (out.status.code(), json)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[test]
fn reports_every_check_on_this_machine() {
    let home = Home::new("doctor-here");
    let (code, report) = doctor_json(&home, &[]);
    for name in [
        "kernel", "btf", "hooks", "caps", "bpf", "memlock", "tracefs", "cgroup", "config", "port",
    ] {
        let status = check(&report, name)["status"].as_str().unwrap().to_string();
        assert!(
            ["pass", "warn", "fail"].contains(&status.as_str()),
            "{name}: {status}"
        );
    }
    // No config yet is a warning, not a failure.
    assert_eq!(check(&report, "config")["status"], "warn");
    assert_eq!(code, Some(if report["ok"] == true { 0 } else { 1 }));
    let mode = report["capture"]["mode"].as_str().unwrap();
    assert!(["ebpf", "userspace"].contains(&mode), "{mode}");
    assert!(!report["capture"]["reason"].as_str().unwrap().is_empty());
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert_eq!(check(&report, "btf")["status"], "pass");
    }
    // The table form says the same, with the capture mode at the end.
    let out = home.run(&["doctor"]);
    let table = text(&out.stdout);
    assert!(table.contains("capture mode:"), "{table}");
    assert!(table.contains("btf"), "{table}");
}

#[test]
fn missing_btf_means_userspace_capture() {
    let home = Home::new("doctor-nobtf");
    let missing = home.root.join("no-such-vmlinux");
    let (_, report) = doctor_json(&home, &[("APX_DOCTOR_BTF_PATH", missing.to_str().unwrap())]);
    let btf = check(&report, "btf");
    assert_eq!(btf["status"], "warn");
    assert!(btf["detail"].as_str().unwrap().contains("no-such-vmlinux"));
    assert!(
        btf["fix"]
            .as_str()
            .unwrap()
            .contains("CONFIG_DEBUG_INFO_BTF")
    );
    assert_eq!(report["capture"]["mode"], "userspace");
    assert!(
        report["capture"]["reason"]
            .as_str()
            .unwrap()
            .contains("BTF")
    );
}

#[test]
fn failures_exit_non_zero_with_a_fix() {
    let home = Home::new("doctor-fail");
    // A config whose port is taken and whose credential is missing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::create_dir_all(home.root.join("etc")).unwrap();
    std::fs::write(
        home.config(),
        format!(
            "listen = \"127.0.0.1:{port}\"\n[providers.openai]\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key = \"${{APX_TEST_UNSET_KEY}}\"\n[[models]]\nname = \"m\"\nprovider = \"openai\"\n"
        ),
    )
    .unwrap();
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], false);
    assert_eq!(check(&report, "config")["status"], "pass");
    let creds = check(&report, "credentials");
    assert_eq!(creds["status"], "fail");
    assert!(
        creds["detail"]
            .as_str()
            .unwrap()
            .contains("APX_TEST_UNSET_KEY")
    );
    assert!(creds["fix"].as_str().unwrap().contains("apx.env"));
    let port_check = check(&report, "port");
    assert_eq!(port_check["status"], "fail");
    assert!(port_check["fix"].is_string());

    // The credential from apx.env counts.
    std::fs::write(home.file("apx.env"), "APX_TEST_UNSET_KEY=\"k\"\n").unwrap();
    let (_, report) = doctor_json(&home, &[]);
    assert_eq!(check(&report, "credentials")["status"], "pass");

    // A broken config fails the config check, pointing at the line.
    std::fs::write(
        home.config(),
        "listen = \"127.0.0.1:1\"\n[[models]]\nname = 3\n",
    )
    .unwrap();
    let (code, report) = doctor_json(&home, &[]);
    assert_eq!(code, Some(1));
    let config = check(&report, "config");
    assert_eq!(config["status"], "fail");
    assert!(
        config["detail"].as_str().unwrap().contains("apx.toml:3"),
        "{config}"
    );
    drop(taken);
}

#[test]
fn capture_ebpf_in_config_fails_where_ebpf_cannot_work() {
    let home = Home::new("doctor-ebpf");
    std::fs::create_dir_all(home.root.join("etc")).unwrap();
    std::fs::write(
        home.config(),
        format!(
            "listen = \"127.0.0.1:{}\"\n[logging]\ncapture = \"ebpf\"\n",
            home.port
        ),
    )
    .unwrap();
    let missing = home.root.join("none");
    let (code, report) = doctor_json(&home, &[("APX_DOCTOR_BTF_PATH", missing.to_str().unwrap())]);
    assert_eq!(code, Some(1));
    let capture = check(&report, "capture");
    assert_eq!(capture["status"], "fail");
    assert!(capture["fix"].as_str().unwrap().contains("auto"));
}
