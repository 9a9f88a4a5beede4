//! Unique, random-looking identifiers (`chatcmpl-…`, `msg_…`, `req_…`) and
//! timestamps.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);
static SEED: OnceLock<u64> = OnceLock::new();

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// SplitMix64: a bijection on u64 with good bit mixing.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed() -> u64 {
    *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        splitmix64(nanos ^ (u64::from(std::process::id()) << 32))
    })
}

/// `prefix` followed by `len` characters. The first word of randomness is
/// written out in full (11 base-62 or 16 hex digits) and encodes a
/// per-process unique value, so two ids from one process never collide once
/// `len` covers it.
fn make(prefix: &str, len: usize, alphabet: &[u8]) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let radix = alphabet.len() as u64;
    // Digits needed to write any u64 in this radix exactly.
    let per_word = if radix == 16 { 16 } else { 11 };
    // seed + n is distinct for every n and splitmix64 is a bijection.
    let mut word = splitmix64(seed().wrapping_add(n));
    let mut value = word;
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    for i in 0..len {
        if i > 0 && i % per_word == 0 {
            word = splitmix64(word);
            value = word;
        }
        out.push(char::from(alphabet[(value % radix) as usize]));
        value /= radix;
    }
    out
}

/// Base-62 id, the style of OpenAI chat and Anthropic message ids.
pub(crate) fn alnum(prefix: &str, len: usize) -> String {
    make(prefix, len, BASE62)
}

/// Lower-case hex id, the style of Responses API ids.
pub(crate) fn hex(prefix: &str, len: usize) -> String {
    make(prefix, len, HEX)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let a = alnum("chatcmpl-", 29);
        let b = alnum("chatcmpl-", 29);
        assert_ne!(a, b);
        assert_eq!(a.len(), "chatcmpl-".len() + 29);
        assert!(
            a["chatcmpl-".len()..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric())
        );
        let h = hex("resp_", 48);
        assert_eq!(h.len(), 53);
        assert!(h[5..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
