//! The embedded default store: SQLite files in the state directory.
//! `state.db` holds gateway keys; request logs get their own file so log
//! traffic never contends with key lookups.

pub mod keys;
pub mod logs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// A store that cannot be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the state directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store {}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store query failed")]
    Query(#[from] rusqlite::Error),
    #[error("cannot read log block {block}")]
    Block {
        block: i64,
        source: logs::block::BlockError,
    },
    #[error("no key with id or name `{0}`")]
    NoSuchKey(String),
    #[error("a key named `{0}` already exists")]
    DuplicateKeyName(String),
    #[error("cannot read random bytes for a new key")]
    Random(#[source] std::io::Error),
    #[error("cannot start the store's background thread")]
    Thread(#[source] std::io::Error),
}

/// Opens (creating if needed) a SQLite file in WAL mode, so readers never
/// wait for the writer, with a busy timeout for concurrent processes.
pub fn open_sqlite(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let open = || -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(conn)
    };
    open().map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}
