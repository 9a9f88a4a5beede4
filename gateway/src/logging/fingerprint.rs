//! Credential fingerprints: a keyed SipHash-2-4 of the token, the same
//! function the kernel programs compute, so a record can say which key was
//! used without the key ever being logged. The 128-bit hash key is random per
//! installation and kept in the state directory, so fingerprints stay stable
//! across restarts but cannot be precomputed by anyone without that file.

use std::io::{Read, Write};
use std::path::Path;

use apx_capture_common as common;

#[derive(Clone, Copy)]
pub struct FingerprintKey {
    k0: u64,
    k1: u64,
    bytes: [u8; 16],
}

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey([redacted])")
    }
}

impl FingerprintKey {
    pub fn from_bytes(bytes: [u8; 16]) -> FingerprintKey {
        let (k0, k1) = common::key_from_bytes(&bytes);
        FingerprintKey { k0, k1, bytes }
    }

    /// Reads the key file, creating it (mode 0600) with random bytes if missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<FingerprintKey> {
        let mut bytes = [0u8; 16];
        match std::fs::File::open(path) {
            Ok(mut file) => {
                file.read_exact(&mut bytes)?;
                return Ok(FingerprintKey::from_bytes(bytes));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(&bytes)?;
                file.sync_all()?;
                Ok(FingerprintKey::from_bytes(bytes))
            }
            // Another process created it first: use theirs.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::load_or_create(path)
            }
            Err(err) => Err(err),
        }
    }

    pub fn k0_k1(&self) -> (u64, u64) {
        (self.k0, self.k1)
    }

    pub fn bytes(&self) -> [u8; 16] {
        self.bytes
    }

    /// 16 hex digits.
    pub fn fingerprint(&self, token: &[u8]) -> String {
        common::user::fp_hex(self.fingerprint_value(token))
    }

    /// The fingerprint as a number (the form the kernel records carry).
    pub fn fingerprint_value(&self, token: &[u8]) -> u64 {
        common::fingerprint(self.k0, self.k1, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_kernel_test_vector() {
        let key = FingerprintKey::from_bytes(common::TEST_KEY);
        assert_eq!(
            key.fingerprint(common::TEST_TOKEN),
            format!("{:016x}", common::TEST_FP)
        );
    }

    #[test]
    fn key_file_is_created_once_and_private() {
        let dir = std::env::temp_dir().join(format!("apx-fp-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("fingerprint.key");
        let a = FingerprintKey::load_or_create(&path).unwrap();
        let b = FingerprintKey::load_or_create(&path).unwrap();
        assert_eq!(a.bytes(), b.bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
