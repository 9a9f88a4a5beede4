//! Where apx keeps its files, following XDG for users and /etc for root.
//!
//! Beside the config file live the secrets the gateway needs (`apx.env`,
//! mode 0600, loaded by the systemd unit and by `apx start`) and the local
//! CLI's own gateway key (`client.key`, mode 0600, used by `apx call`). The
//! state directory (named by `[storage] dir`) holds the key store, the
//! request logs and, for the managed daemon, its pidfile and log file.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The config file to use: the explicit one, else the user's, else the system's.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let user = user_config_dir().map(|dir| dir.join("apx.toml"));
            match user {
                Some(path) if path.exists() => path,
                _ if is_root() || Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
                Some(path) => path,
                None => PathBuf::from(SYSTEM_CONFIG),
            }
        }
    };
    // Relative paths in the config are taken from its directory, and the
    // daemon runs elsewhere: always work with the absolute path.
    std::path::absolute(&path).unwrap_or(path)
}

pub const SYSTEM_CONFIG: &str = "/etc/apx/apx.toml";

fn user_config_dir() -> Option<PathBuf> {
    xdg_config_home().map(|dir| dir.join("apx"))
}

fn xdg_config_home() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".config"))
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The files that belong to one config.
#[derive(Clone, Debug)]
pub struct Files {
    pub config: PathBuf,
    /// Secrets for the gateway process (`KEY="value"` lines, mode 0600).
    pub env: PathBuf,
    /// The local CLI's gateway key (mode 0600).
    pub client_key: PathBuf,
    /// The systemd unit as rendered, kept beside the config for reference.
    pub unit_copy: PathBuf,
}

impl Files {
    pub fn of(config: &Path) -> Files {
        let dir = config.parent().unwrap_or(Path::new("."));
        Files {
            config: config.to_path_buf(),
            env: dir.join("apx.env"),
            client_key: dir.join("client.key"),
            unit_copy: dir.join("apx.service"),
        }
    }
}

/// Files of the managed (non-systemd) daemon, in the state directory.
pub fn pidfile(state_dir: &Path) -> PathBuf {
    state_dir.join("apx.pid")
}

pub fn daemon_log(state_dir: &Path) -> PathBuf {
    state_dir.join("apx.log")
}

/// Where the systemd unit is installed: the system unit directory as root,
/// the user's unit directory otherwise.
pub fn systemd_unit_path(root: bool) -> Option<PathBuf> {
    if root {
        return Some(PathBuf::from("/etc/systemd/system/apx.service"));
    }
    xdg_config_home().map(|dir| dir.join("systemd/user/apx.service"))
}

/// The state directory a config names, without validating the rest of it
/// (so `apx stop` still finds the pidfile of a gateway whose config has
/// since been broken). Falls back to the default state directory.
pub fn state_dir_of(config: &Path, text: Option<&str>) -> PathBuf {
    let named = text
        .and_then(|text| toml::from_str::<toml::Table>(text).ok())
        .and_then(|table| {
            table
                .get("storage")?
                .get("dir")?
                .as_str()
                .map(PathBuf::from)
        });
    match named {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => config.parent().unwrap_or(Path::new(".")).join(dir),
        None => apx_gateway::config::default_state_dir(),
    }
}

/// Writes `contents` to `path` atomically (temporary file, fsync, rename)
/// with permission bits `mode`, creating the parent directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "apx".to_string());
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(err).context(format!("cannot write {}", path.display()))
    })
}

/// Reads a file that may be absent: `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(anyhow::Error::new(err).context(format!("cannot read {}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_files_sit_beside_the_config() {
        let files = Files::of(Path::new("/etc/apx/apx.toml"));
        assert_eq!(files.env, Path::new("/etc/apx/apx.env"));
        assert_eq!(files.client_key, Path::new("/etc/apx/client.key"));
    }

    #[test]
    fn state_dir_follows_the_config() {
        let config = Path::new("/srv/apx/apx.toml");
        assert_eq!(
            state_dir_of(config, Some("[storage]\ndir = \"/data/apx\"\n")),
            Path::new("/data/apx")
        );
        assert_eq!(
            state_dir_of(config, Some("[storage]\ndir = \"state\"\n")),
            Path::new("/srv/apx/state")
        );
        assert_eq!(
            state_dir_of(config, Some("this is not toml [")),
            apx_gateway::config::default_state_dir()
        );
    }

    #[test]
    fn atomic_writes_set_the_mode() {
        let dir = std::env::temp_dir().join(format!("apx-paths-{}", std::process::id()));
        let path = dir.join("secret");
        write_atomic(&path, b"x", 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_optional(&path).unwrap().as_deref(), Some("x"));
        assert_eq!(read_optional(&dir.join("missing")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
