//! Whether the tests that load eBPF programs run here. Shared by the
//! gateway's and the CLI's integration tests (the CLI's include this file).

/// As root, or under CI whatever the user: there they must run, not skip.
pub fn ebpf_tests_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    if !root && !ci {
        eprintln!("skipping {test}: loading eBPF programs needs root (and CI is not set)");
        return false;
    }
    true
}
