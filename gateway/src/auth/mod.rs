//! Gateway-issued client keys: how they look, how they are stored (hash only)
//! and how a request's key is found and checked.
//!
//! Keys are 32 random bytes, so a plain SHA-256 is enough to make the stored
//! hash useless to an attacker; no slow password hash is needed.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Prefix of every key apx issues, so leaked keys are easy to recognise.
pub const KEY_PREFIX: &str = "apx-";

/// SHA-256 of a gateway key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    /// Reads the `sha256:<hex>` form used in config files and stores.
    pub fn parse(text: &str) -> Result<KeyHash, String> {
        let hex_digits = text.strip_prefix("sha256:").ok_or_else(|| {
            format!("`{text}` is not a key hash (expected `sha256:` followed by 64 hex digits)")
        })?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| {
            format!("`{text}` is not a key hash (expected 64 hex digits after `sha256:`)")
        })?;
        Ok(KeyHash(bytes))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key the gateway accepts, known by its id and name; the key itself is never kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKey {
    /// Public id, safe to log: `key_…` for stored keys, `config:<name>` for
    /// keys listed in the config file.
    /// Interned (`crate::intern`): copied into every call's log record.
    pub id: &'static str,
    pub name: &'static str,
    pub hash: KeyHash,
    pub expires_at: Option<SystemTime>,
}

/// The set of accepted keys. Swappable at run time so a revocation takes
/// effect without a restart.
#[derive(Default)]
pub struct KeyRing {
    keys: ArcSwap<HashMap<KeyHash, GatewayKey>>,
}

impl KeyRing {
    pub fn new(keys: impl IntoIterator<Item = GatewayKey>) -> KeyRing {
        let ring = KeyRing::default();
        ring.replace(keys);
        ring
    }

    pub fn replace(&self, keys: impl IntoIterator<Item = GatewayKey>) {
        let map = keys.into_iter().map(|key| (key.hash, key)).collect();
        self.keys.store(Arc::new(map));
    }

    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the key a request presented.
    pub fn authenticate(&self, presented: &str) -> Option<GatewayKey> {
        let keys = self.keys.load();
        let key = keys.get(&KeyHash::of(presented))?;
        if key.expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return None;
        }
        Some(key.clone())
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no API key given: send the gateway key as `Authorization: Bearer <key>` or `x-api-key: <key>`"
    )]
    Missing,
    #[error(
        "invalid API key: the key is not a gateway key issued by this apx instance, or it was revoked"
    )]
    Invalid,
}

/// Finds the client's key in `Authorization: Bearer …` or `x-api-key`, the two
/// places the OpenAI and Anthropic SDKs put it.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?.trim();
        let (scheme, token) = text.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = token.trim();
            return (!token.is_empty()).then_some(token);
        }
        return None;
    }
    let text = headers.get("x-api-key")?.to_str().ok()?.trim();
    (!text.is_empty()).then_some(text)
}

/// Authenticates a request's headers against the key ring.
pub fn authenticate(ring: &KeyRing, headers: &HeaderMap) -> Result<GatewayKey, AuthError> {
    let presented = presented_key(headers).ok_or(AuthError::Missing)?;
    ring.authenticate(presented).ok_or(AuthError::Invalid)
}

/// Makes a new random gateway key: `apx-` and 43 URL-safe base64 characters
/// (256 bits) read from the operating system's random source.
pub fn generate_key() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut key = String::with_capacity(KEY_PREFIX.len() + 43);
    key.push_str(KEY_PREFIX);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in bytes {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            key.push(char::from(ALPHABET[((acc >> bits) & 63) as usize]));
        }
    }
    if bits > 0 {
        key.push(char::from(ALPHABET[((acc << (6 - bits)) & 63) as usize]));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_through_text() {
        let hash = KeyHash::of("hello");
        let text = hash.to_string();
        assert_eq!(
            text,
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(KeyHash::parse(&text).unwrap(), hash);
        assert!(KeyHash::parse("sha256:zz").is_err());
        assert!(KeyHash::parse("2cf24dba").is_err());
    }

    #[test]
    fn keys_are_found_in_both_headers() {
        let ring = KeyRing::new([test_key("alice", "apx-secret")]);
        let mut headers = HeaderMap::new();
        assert_eq!(authenticate(&ring, &headers), Err(AuthError::Missing));
        headers.insert("x-api-key", "apx-secret".parse().unwrap());
        assert_eq!(authenticate(&ring, &headers).unwrap().name, "alice");
        headers.insert("authorization", "Bearer apx-wrong".parse().unwrap());
        assert_eq!(authenticate(&ring, &headers), Err(AuthError::Invalid));
        headers.insert("authorization", "bearer  apx-secret ".parse().unwrap());
        assert!(authenticate(&ring, &headers).is_ok());
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(authenticate(&ring, &headers), Err(AuthError::Missing));
    }

    fn test_key(name: &str, key: &str) -> GatewayKey {
        GatewayKey {
            id: crate::intern::intern(&format!("config:{name}")),
            name: crate::intern::intern(name),
            hash: KeyHash::of(key),
            expires_at: None,
        }
    }

    #[test]
    fn expired_keys_are_refused() {
        let mut key = test_key("old", "k");
        key.expires_at = Some(SystemTime::now() - std::time::Duration::from_secs(1));
        let ring = KeyRing::new([key]);
        assert!(ring.authenticate("k").is_none());
    }

    #[test]
    fn revocation_takes_effect_on_replace() {
        let ring = KeyRing::new([test_key("a", "k")]);
        assert!(ring.authenticate("k").is_some());
        ring.replace([]);
        assert!(ring.authenticate("k").is_none());
    }

    #[test]
    fn generated_keys_are_distinct_and_well_formed() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert!(a.starts_with(KEY_PREFIX));
        assert!(
            a[4..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
    }
}
