//! Gateway keys issued by `apx keys create`, kept as hashes in `state.db`.
//! The running gateway re-reads the table when it changes, so a revocation
//! takes effect without a restart.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, open_sqlite};
use crate::auth::{GatewayKey, KeyHash, generate_key};

/// A key as the store knows it: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// Public identifier, safe to show and log (`key_…`).
    pub id: String,
    pub name: String,
    pub hash: KeyHash,
    /// The first characters of the key, so a user can tell keys apart.
    pub prefix: String,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
}

impl StoredKey {
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    pub fn to_gateway_key(&self) -> GatewayKey {
        GatewayKey {
            id: crate::intern::intern(&self.id),
            name: crate::intern::intern(&self.name),
            hash: self.hash,
            expires_at: self.expires_at,
        }
    }
}

pub struct KeyStore {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    hash        TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);";

fn to_unix(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl KeyStore {
    pub fn open(path: &Path) -> Result<KeyStore, StoreError> {
        let conn = open_sqlite(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(KeyStore { conn })
    }

    /// Issues a new key. Returns the stored record and the key itself, which
    /// exists nowhere else: show it once.
    pub fn create(
        &self,
        name: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<(StoredKey, String), StoreError> {
        let key = generate_key().map_err(StoreError::Random)?;
        let hash = KeyHash::of(&key);
        let id = format!("key_{}", &hash.to_string()["sha256:".len()..][..12]);
        let stored = StoredKey {
            id,
            name: name.to_string(),
            hash,
            prefix: key.chars().take(8).collect(),
            created_at: SystemTime::now(),
            expires_at,
            revoked_at: None,
        };
        let inserted = self.conn.execute(
            "INSERT INTO gateway_keys (id, name, hash, prefix, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                stored.id,
                stored.name,
                stored.hash.to_string(),
                stored.prefix,
                to_unix(stored.created_at),
                stored.expires_at.map(to_unix),
            ],
        );
        match inserted {
            Ok(_) => Ok((stored, key)),
            Err(rusqlite::Error::SqliteFailure(err, Some(message)))
                if err.code == rusqlite::ErrorCode::ConstraintViolation
                    && message.contains("gateway_keys.name") =>
            {
                Err(StoreError::DuplicateKeyName(name.to_string()))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Every key ever issued, newest first, revoked ones included.
    pub fn list(&self) -> Result<Vec<StoredKey>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT id, name, hash, prefix, created_at, expires_at, revoked_at
             FROM gateway_keys ORDER BY created_at DESC, id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, Option<i64>>(5)?,
                row.get::<_, Option<i64>>(6)?,
            ))
        })?;
        let mut keys = Vec::new();
        for row in rows {
            let (id, name, hash, prefix, created, expires, revoked) = row?;
            // Rows are only written by `create`, which stores a valid hash;
            // a row edited by hand into garbage is skipped, not trusted.
            let Ok(hash) = KeyHash::parse(&hash) else {
                continue;
            };
            keys.push(StoredKey {
                id,
                name,
                hash,
                prefix,
                created_at: from_unix(created),
                expires_at: expires.map(from_unix),
                revoked_at: revoked.map(from_unix),
            });
        }
        Ok(keys)
    }

    /// Revokes a key by id or name. Revoking twice is not an error.
    pub fn revoke(&self, id_or_name: &str) -> Result<StoredKey, StoreError> {
        let id: Option<String> = self
            .conn
            .query_row(
                "SELECT id FROM gateway_keys WHERE id = ?1 OR name = ?1",
                params![id_or_name],
                |row| row.get(0),
            )
            .optional()?;
        let id = id.ok_or_else(|| StoreError::NoSuchKey(id_or_name.to_string()))?;
        self.conn.execute(
            "UPDATE gateway_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, to_unix(SystemTime::now())],
        )?;
        self.list()?
            .into_iter()
            .find(|key| key.id == id)
            .ok_or_else(|| StoreError::NoSuchKey(id_or_name.to_string()))
    }

    /// The keys the gateway accepts now.
    pub fn active(&self) -> Result<Vec<GatewayKey>, StoreError> {
        let now = SystemTime::now();
        Ok(self
            .list()?
            .iter()
            .filter(|key| key.is_active(now))
            .map(StoredKey::to_gateway_key)
            .collect())
    }

    /// Changes whenever another connection commits to this database: a cheap
    /// way for the gateway to notice `apx keys` edits.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_revoke() {
        let dir = std::env::temp_dir().join(format!("apx-keys-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = KeyStore::open(&dir.join("state.db")).unwrap();
        let (alice, key) = store.create("alice", None).unwrap();
        assert!(key.starts_with("apx-"));
        assert_eq!(alice.hash, KeyHash::of(&key));
        assert!(key.starts_with(&alice.prefix));
        assert!(matches!(
            store.create("alice", None),
            Err(StoreError::DuplicateKeyName(_))
        ));
        let past = SystemTime::now() - Duration::from_secs(10);
        store.create("expired", Some(past)).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
        let active = store.active().unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].name, "alice");

        let other = KeyStore::open(&dir.join("state.db")).unwrap();
        let before = other.data_version().unwrap();
        let revoked = store.revoke("alice").unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_ne!(other.data_version().unwrap(), before);
        assert!(other.active().unwrap().is_empty());
        assert!(matches!(
            store.revoke("nobody"),
            Err(StoreError::NoSuchKey(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
