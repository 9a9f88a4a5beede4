//! Where apx keeps its files, following XDG for users and /etc for root.

use std::path::{Path, PathBuf};

/// The config file to use: the explicit one, else the user's, else the system's.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let user = user_config_dir().map(|dir| dir.join("apx.toml"));
    match user {
        Some(path) if path.exists() => path,
        _ if is_root() || Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
        Some(path) => path,
        None => PathBuf::from(SYSTEM_CONFIG),
    }
}

const SYSTEM_CONFIG: &str = "/etc/apx/apx.toml";

fn user_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("apx"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".config").join("apx"))
}

fn is_root() -> bool {
    // SAFETY-free check: the effective uid of this process, via /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
