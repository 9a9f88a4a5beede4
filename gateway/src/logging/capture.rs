//! User-space capture: the same header elements the kernel programs take,
//! read from the request the gateway parsed. Used when eBPF is unavailable
//! or not wanted; the fields and their bounds match the kernel's.

use apx_capture_common as common;
use http::{HeaderMap, HeaderName};

use super::fingerprint::FingerprintKey;
use super::record::{CredentialEntry, SmallText};
use crate::intern::intern;

/// The header names captured in clear: the fixed list, then configured extras.
#[derive(Clone, Debug)]
pub struct CaptureList {
    /// Parsed once (a lookup by `&str` parses the name on every request),
    /// with the name interned for the records that carry it.
    entries: Vec<(HeaderName, &'static str)>,
}

impl CaptureList {
    pub fn new(extra: &[String]) -> CaptureList {
        let mut names: Vec<String> = common::FIELD_NAMES.iter().map(|n| n.to_string()).collect();
        for name in extra.iter().take(common::EXTRA_SLOTS) {
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) && !common::CRED_NAMES.contains(&name.as_str()) {
                names.push(name);
            }
        }
        // The config accepts only valid header names; any other is skipped.
        let entries = names
            .iter()
            .filter_map(|n| Some((HeaderName::from_bytes(n.as_bytes()).ok()?, intern(n))))
            .collect();
        CaptureList { entries }
    }

    /// Selected headers, values cut to the kernel's bound.
    pub fn headers(&self, headers: &HeaderMap) -> (Vec<(&'static str, SmallText)>, bool) {
        let mut out = Vec::new();
        let mut truncated = false;
        for (name, shared) in &self.entries {
            if let Some(value) = headers.get(name) {
                let bytes = value.as_bytes();
                truncated |= bytes.len() > common::VALUE_CAP;
                let kept = &bytes[..bytes.len().min(common::VALUE_CAP)];
                out.push((*shared, SmallText::from_utf8_lossy(kept)));
            }
        }
        (out, truncated)
    }
}

/// Credential headers: presence, scheme and fingerprint; never the value.
pub fn credentials(headers: &HeaderMap, key: &FingerprintKey) -> Vec<CredentialEntry> {
    let mut out = Vec::new();
    for name in common::CRED_NAMES {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let value = trim_leading(value.as_bytes());
        let (scheme, token) = if name == "authorization" {
            split_scheme(value)
        } else {
            ("none", value)
        };
        out.push(CredentialEntry {
            header: name,
            scheme,
            fingerprint: key.fingerprint_value(token),
        });
    }
    out
}

fn trim_leading(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// `Bearer <token>` → ("bearer", token), following the kernel's rule: the
/// token is what follows the first space, leading spaces skipped.
fn split_scheme(value: &[u8]) -> (&'static str, &[u8]) {
    let Some(space) = value.iter().position(|b| *b == b' ') else {
        return ("none", value);
    };
    let scheme = &value[..space];
    let token = trim_leading(&value[space..]);
    let kind = if scheme.eq_ignore_ascii_case(b"bearer") {
        "bearer"
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        "basic"
    } else {
        "other"
    };
    (kind, token)
}

/// The kernel's scheme numbers, as names.
pub fn scheme_name(scheme: u8) -> &'static str {
    match scheme {
        common::SCHEME_BEARER => "bearer",
        common::SCHEME_BASIC => "basic",
        common::SCHEME_OTHER => "other",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_selected_headers_and_fingerprints_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "OpenAI/Python 3.51.0".parse().unwrap());
        headers.insert("x-tenant", "acme".parse().unwrap());
        headers.insert("x-ignored", "no".parse().unwrap());
        headers.insert(
            "authorization",
            "Bearer   sk-apx-test-0123456789abcdef".parse().unwrap(),
        );
        headers.insert("cookie", "a=b".parse().unwrap());
        let list = CaptureList::new(&["X-Tenant".to_string()]);
        let (captured, truncated) = list.headers(&headers);
        assert!(!truncated);
        assert_eq!(
            captured,
            vec![
                ("user-agent", "OpenAI/Python 3.51.0".into()),
                ("x-tenant", "acme".into())
            ]
        );
        let key = FingerprintKey::from_bytes(common::TEST_KEY);
        let creds = credentials(&headers, &key);
        assert_eq!(creds.len(), 2);
        assert_eq!(creds[0].scheme, "bearer");
        assert_eq!(creds[0].fingerprint, common::TEST_FP);
        assert_eq!(creds[1].header, "cookie");
        let debug = format!("{creds:?}");
        assert!(!debug.contains("sk-apx") && !debug.contains("a=b"));
    }

    #[test]
    fn long_values_are_cut_like_the_kernel_does() {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "u".repeat(500).parse().unwrap());
        let (captured, truncated) = CaptureList::new(&[]).headers(&headers);
        assert!(truncated);
        assert_eq!(captured[0].1.len(), common::VALUE_CAP);
    }
}
