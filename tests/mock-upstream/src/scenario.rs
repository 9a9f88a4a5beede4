//! The `x-mock-scenario` request header: a comma-separated list of failure
//! modes and reply shapes.

use std::time::Duration;

/// Response compression a scenario asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Gzip,
    Br,
}

impl Encoding {
    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
        }
    }
}

/// Everything one request's `x-mock-scenario` header asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scenario {
    /// `status:<code>`: answer with this error status in the API's shape.
    pub status: Option<u16>,
    /// `html-error:<code>`: answer with this status and an HTML body.
    pub html_error: Option<u16>,
    /// `slow-first-byte:<ms>`: wait before sending the response head.
    pub slow_first_byte: Option<Duration>,
    /// `chunk-delay:<ms>`: wait between stream events.
    pub chunk_delay: Option<Duration>,
    /// `stall-after:<n>`: send n events, then hang forever.
    pub stall_after: Option<usize>,
    /// `drop-after:<n>`: send n events, then abort the body.
    pub drop_after: Option<usize>,
    /// `empty-stream`: 200 event-stream head with an empty body.
    pub empty_stream: bool,
    /// `gzip` / `br`: compress successful bodies.
    pub encoding: Option<Encoding>,
    /// `words:<n>`: the reply is `w1 w2 … wn`.
    pub words: Option<usize>,
}

pub(crate) const KNOWN: &str = "status:<code>, html-error:<code>, slow-first-byte:<ms>, \
     chunk-delay:<ms>, stall-after:<n>, drop-after:<n>, empty-stream, gzip, br, words:<n>";

impl Scenario {
    /// Parses every value of the header (values may repeat; each is a
    /// comma-separated list). Empty entries are ignored.
    pub(crate) fn parse<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Scenario, String> {
        let mut sc = Scenario::default();
        for value in values {
            let value = std::str::from_utf8(value)
                .map_err(|_| "x-mock-scenario header is not valid UTF-8".to_owned())?;
            for entry in value.split(',') {
                let entry = entry.trim();
                if !entry.is_empty() {
                    sc.apply(entry)?;
                }
            }
        }
        Ok(sc)
    }

    fn apply(&mut self, entry: &str) -> Result<(), String> {
        let (name, arg) = match entry.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (entry, None),
        };
        let lower = name.to_ascii_lowercase();
        match (lower.as_str(), arg) {
            ("status", Some(a)) => self.status = Some(error_status(entry, a)?),
            ("html-error", Some(a)) => self.html_error = Some(error_status(entry, a)?),
            ("slow-first-byte", Some(a)) => self.slow_first_byte = Some(millis(entry, a)?),
            ("chunk-delay", Some(a)) => self.chunk_delay = Some(millis(entry, a)?),
            ("stall-after", Some(a)) => self.stall_after = Some(count(entry, a)?),
            ("drop-after", Some(a)) => self.drop_after = Some(count(entry, a)?),
            ("words", Some(a)) => {
                let n = count(entry, a)?;
                if n == 0 || n > 10_000_000 {
                    return Err(format!(
                        "x-mock-scenario entry '{entry}': words must be between 1 and 10000000"
                    ));
                }
                self.words = Some(n);
            }
            ("empty-stream", None) => self.empty_stream = true,
            ("gzip", None) => self.encoding = Some(Encoding::Gzip),
            ("br", None) => self.encoding = Some(Encoding::Br),
            _ => {
                return Err(format!(
                    "unknown x-mock-scenario entry '{entry}' (known: {KNOWN})"
                ));
            }
        }
        Ok(())
    }
}

fn error_status(entry: &str, arg: &str) -> Result<u16, String> {
    match arg.parse::<u16>() {
        Ok(code) if (400..=599).contains(&code) => Ok(code),
        _ => Err(format!(
            "x-mock-scenario entry '{entry}': expected an HTTP error status 400-599"
        )),
    }
}

fn millis(entry: &str, arg: &str) -> Result<Duration, String> {
    arg.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("x-mock-scenario entry '{entry}': expected milliseconds"))
}

fn count(entry: &str, arg: &str) -> Result<usize, String> {
    arg.parse::<usize>()
        .map_err(|_| format!("x-mock-scenario entry '{entry}': expected a non-negative integer"))
}

/// Which of gzip / br the request's `accept-encoding` allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Accepts {
    pub gzip: bool,
    pub br: bool,
}

impl Accepts {
    pub(crate) fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Accepts {
        let mut acc = Accepts::default();
        for value in values {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            for item in value.split(',') {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
                let refused = parts.any(|p| {
                    let p = p.trim();
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                if refused {
                    continue;
                }
                match coding.as_str() {
                    "gzip" | "x-gzip" => acc.gzip = true,
                    "br" => acc.br = true,
                    "*" => {
                        acc.gzip = true;
                        acc.br = true;
                    }
                    _ => {}
                }
            }
        }
        acc
    }

    /// The encoding to use for a successful body, if the scenario wants one
    /// and the client accepts it.
    pub(crate) fn pick(self, wanted: Option<Encoding>) -> Option<Encoding> {
        match wanted {
            Some(Encoding::Gzip) if self.gzip => Some(Encoding::Gzip),
            Some(Encoding::Br) if self.br => Some(Encoding::Br),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Scenario, String> {
        Scenario::parse([s.as_bytes()])
    }

    #[test]
    fn parses_lists() {
        let sc = parse(" status:429 , chunk-delay:5,gzip,words:3,,").unwrap();
        assert_eq!(sc.status, Some(429));
        assert_eq!(sc.chunk_delay, Some(Duration::from_millis(5)));
        assert_eq!(sc.encoding, Some(Encoding::Gzip));
        assert_eq!(sc.words, Some(3));
        let sc = parse("stall-after:0,drop-after:2,empty-stream,br,html-error:502").unwrap();
        assert_eq!(sc.stall_after, Some(0));
        assert_eq!(sc.drop_after, Some(2));
        assert!(sc.empty_stream);
        assert_eq!(sc.encoding, Some(Encoding::Br));
        assert_eq!(sc.html_error, Some(502));
        assert_eq!(parse("").unwrap(), Scenario::default());
    }

    #[test]
    fn rejects_typos() {
        assert!(parse("stauts:500").unwrap_err().contains("unknown"));
        assert!(parse("gzip:1").is_err());
        assert!(parse("status").is_err());
        assert!(parse("status:200").is_err());
        assert!(parse("chunk-delay:abc").is_err());
        assert!(parse("words:0").is_err());
    }

    #[test]
    fn accept_encoding() {
        let a = Accepts::parse([&b"gzip, deflate"[..]]);
        assert!(a.gzip && !a.br);
        let a = Accepts::parse([&b"br;q=1.0, gzip;q=0"[..]]);
        assert!(!a.gzip && a.br);
        let a = Accepts::parse([&b"*"[..]]);
        assert!(a.gzip && a.br);
        assert_eq!(
            Accepts::parse([&b"identity"[..]]).pick(Some(Encoding::Gzip)),
            None
        );
    }
}
