//! The request log store: one SQLite file (`logs.db`) in WAL mode, written in
//! batches by the collector thread and read by `apx logs`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};

use super::{StoreError, open_sqlite};
use crate::logging::record::{CallEntry, CallRecord, Capture};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    id                INTEGER PRIMARY KEY,
    time_ns           INTEGER NOT NULL,
    capture           TEXT,
    partial           INTEGER NOT NULL DEFAULT 0,
    notes             TEXT,
    client_address    TEXT,
    client_port       INTEGER,
    server_port       INTEGER,
    method            TEXT NOT NULL DEFAULT '',
    path              TEXT NOT NULL DEFAULT '',
    http_version      TEXT NOT NULL DEFAULT '',
    status            INTEGER,
    duration_ms       REAL,
    response_start_ms REAL,
    request_bytes     INTEGER,
    response_bytes    INTEGER,
    headers           TEXT,
    credentials       TEXT,
    key_id            TEXT,
    key_name          TEXT,
    model             TEXT,
    upstream_model    TEXT,
    provider          TEXT,
    provider_kind     TEXT,
    upstream_status   INTEGER,
    stream            INTEGER NOT NULL DEFAULT 0,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    first_chunk_ms    REAL,
    error             TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_time   ON calls(time_ns);
CREATE INDEX IF NOT EXISTS calls_by_key    ON calls(key_id, time_ns);
CREATE INDEX IF NOT EXISTS calls_by_model  ON calls(model, time_ns);
CREATE INDEX IF NOT EXISTS calls_by_status ON calls(status, time_ns);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);";

const COLUMNS: &str = "id, time_ns, capture, partial, notes, client_address, client_port, \
    server_port, method, path, http_version, status, duration_ms, response_start_ms, \
    request_bytes, response_bytes, headers, credentials, key_id, key_name, model, \
    upstream_model, provider, provider_kind, upstream_status, stream, input_tokens, \
    output_tokens, first_chunk_ms, error";

/// Which records `apx logs` wants.
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub status: Option<StatusFilter>,
    pub model: Option<String>,
    /// Key id or key name.
    pub key: Option<String>,
    /// Path prefix.
    pub path: Option<String>,
    /// Only records stored after this id (for `--follow`).
    pub after_id: Option<i64>,
    pub limit: Option<u32>,
}

/// `--status 429` or `--status 5xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u16),
}

impl StatusFilter {
    pub fn parse(text: &str) -> Option<StatusFilter> {
        let text = text.trim().to_ascii_lowercase();
        if let Some(class) = text.strip_suffix("xx") {
            let digit: u16 = class.parse().ok()?;
            return (1..=5)
                .contains(&digit)
                .then_some(StatusFilter::Class(digit));
        }
        let code: u16 = text.parse().ok()?;
        (100..=599)
            .contains(&code)
            .then_some(StatusFilter::Exact(code))
    }
}

pub struct LogStore {
    conn: Connection,
}

/// SQL conditions with numbered parameters; `{}` in a condition stands for
/// its (one) parameter, however often it appears.
#[derive(Default)]
struct Filters {
    conditions: Vec<String>,
    values: Vec<SqlValue>,
}

impl Filters {
    fn add(&mut self, condition: &str, value: SqlValue) {
        self.values.push(value);
        let placeholder = format!("?{}", self.values.len());
        self.conditions.push(condition.replace("{}", &placeholder));
    }
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        let conn = open_sqlite(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(LogStore { conn })
    }

    /// Writes records, and counter values (records dropped and why, for
    /// `apx logs --stats`), in one transaction: all are stored, or none is.
    pub fn insert(
        &mut self,
        records: &[CallEntry],
        counters: &[(String, u64)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        if !counters.is_empty() {
            let mut statement = tx.prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            )?;
            for (name, value) in counters {
                statement.execute(rusqlite::params![name, clamp_i64(*value)])?;
            }
        }
        if !records.is_empty() {
            let mut statement = tx.prepare_cached(
                "INSERT INTO calls (time_ns, capture, partial, notes, client_address, client_port,
                    server_port, method, path, http_version, status, duration_ms, response_start_ms,
                    request_bytes, response_bytes, headers, credentials, key_id, key_name, model,
                    upstream_model, provider, provider_kind, upstream_status, stream, input_tokens,
                    output_tokens, first_chunk_ms, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                    ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)",
            )?;
            // Text made per row goes into these, reused across the batch.
            let mut text = RowText::default();
            for record in records {
                text.fill(record);
                let facts = &record.facts;
                statement.execute(rusqlite::params![
                    record.time_unix_ns,
                    record.capture.map(Capture::name),
                    record.partial,
                    (!record.notes.is_empty()).then_some(text.notes.as_str()),
                    record.client.map(|_| text.client_address.as_str()),
                    record.client.map(|(_, port)| port),
                    record.server_port,
                    record.method.as_ref(),
                    record.path,
                    record.http_version.as_ref(),
                    record.status,
                    record.duration_ns.map(millis),
                    record.response_start_ns.map(millis),
                    record.request_bytes.map(clamp_i64),
                    record.response_bytes.map(clamp_i64),
                    text.headers(),
                    text.credentials(),
                    facts.key_id.as_deref(),
                    facts.key_name.as_deref(),
                    facts.model.as_deref(),
                    facts.upstream_model.as_deref(),
                    facts.provider.as_deref(),
                    facts.provider_kind,
                    facts.upstream_status,
                    facts.stream,
                    record.input_tokens.map(clamp_i64),
                    record.output_tokens.map(clamp_i64),
                    record.first_chunk_ns.map(millis),
                    facts.error,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records matching `query`: the newest `limit` ones, oldest first (or
    /// every one after `after_id`, oldest first, for following).
    pub fn query(&self, query: &LogQuery) -> Result<Vec<CallRecord>, StoreError> {
        let mut filters = Filters::default();
        if let Some(since) = query.since_ns {
            filters.add("time_ns >= {}", since.into());
        }
        if let Some(until) = query.until_ns {
            filters.add("time_ns <= {}", until.into());
        }
        match query.status {
            Some(StatusFilter::Exact(code)) => filters.add("status = {}", i64::from(code).into()),
            Some(StatusFilter::Class(class)) => {
                filters.add("status / 100 = {}", i64::from(class).into())
            }
            None => {}
        }
        if let Some(model) = &query.model {
            filters.add("model = {}", model.clone().into());
        }
        if let Some(key) = &query.key {
            filters.add("(key_id = {} OR key_name = {})", key.clone().into());
        }
        if let Some(path) = &query.path {
            let escaped = path
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            filters.add("path LIKE {} ESCAPE '\\'", format!("{escaped}%").into());
        }
        if let Some(after) = query.after_id {
            filters.add("id > {}", after.into());
        }
        let Filters { conditions, values } = filters;
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let limit = query
            .limit
            .unwrap_or(if query.after_id.is_some() { 10_000 } else { 50 });
        let sql = if query.after_id.is_some() {
            format!("SELECT {COLUMNS} FROM calls {filter} ORDER BY id ASC LIMIT {limit}")
        } else {
            format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM calls {filter} ORDER BY time_ns DESC, id DESC LIMIT {limit}) ORDER BY time_ns ASC, id ASC"
            )
        };
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map(params_from_iter(values.iter()), read_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The newest row id, 0 when empty.
    pub fn last_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM calls", [], |row| {
                row.get(0)
            })?)
    }

    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM calls", [], |row| row.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes records older than `retention`, then the oldest ones while the
    /// data takes more than `max_bytes`. Returns how many were deleted.
    pub fn trim(&mut self, retention: Duration, max_bytes: u64) -> Result<u64, StoreError> {
        let cutoff = crate::time::unix_nanos(SystemTime::now() - retention);
        let mut deleted =
            self.conn
                .execute("DELETE FROM calls WHERE time_ns < ?1", [cutoff])? as u64;
        for _ in 0..32 {
            if self.used_bytes()? <= max_bytes {
                break;
            }
            let rows = self.count()?;
            if rows == 0 {
                break;
            }
            let batch = (rows / 10).max(1);
            deleted += self.conn.execute(
                "DELETE FROM calls WHERE id IN (SELECT id FROM calls ORDER BY id ASC LIMIT ?1)",
                [clamp_i64(batch)],
            )? as u64;
        }
        Ok(deleted)
    }

    /// Bytes of the file in use (free pages excluded).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from((pages - free) * size).unwrap_or(0))
    }

    pub fn counters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT name, value FROM counters ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1e6
}

/// The text columns of one row, built into buffers reused across a batch.
/// The JSON shapes are fixed (`[[name, value], …]` and
/// `[{"header":…,"scheme":…,"fingerprint":…}, …]`, what `read_row` parses);
/// strings are escaped by serde_json.
#[derive(Default)]
struct RowText {
    notes: String,
    client_address: String,
    headers: Vec<u8>,
    credentials: Vec<u8>,
}

impl RowText {
    fn fill(&mut self, record: &CallEntry) {
        use std::fmt::Write;
        self.notes.clear();
        for (i, note) in record.notes.iter().enumerate() {
            if i > 0 {
                self.notes.push_str("; ");
            }
            self.notes.push_str(note);
        }
        self.client_address.clear();
        if let Some((ip, _)) = record.client {
            let _ = write!(self.client_address, "{ip}");
        }
        self.headers.clear();
        self.headers.push(b'[');
        for (i, (name, value)) in record.headers.iter().enumerate() {
            if i > 0 {
                self.headers.push(b',');
            }
            self.headers.push(b'[');
            push_json_string(&mut self.headers, name);
            self.headers.push(b',');
            push_json_string(&mut self.headers, value);
            self.headers.push(b']');
        }
        self.headers.push(b']');
        self.credentials.clear();
        self.credentials.push(b'[');
        for (i, credential) in record.credentials.iter().enumerate() {
            if i > 0 {
                self.credentials.push(b',');
            }
            self.credentials.extend_from_slice(b"{\"header\":");
            push_json_string(&mut self.credentials, credential.header);
            self.credentials.extend_from_slice(b",\"scheme\":");
            push_json_string(&mut self.credentials, credential.scheme);
            // Hex digits need no escaping; writing into a Vec cannot fail.
            let _ = std::io::Write::write_fmt(
                &mut self.credentials,
                format_args!(",\"fingerprint\":\"{:016x}\"}}", credential.fingerprint),
            );
        }
        self.credentials.push(b']');
    }

    fn headers(&self) -> &str {
        json_text(&self.headers)
    }

    fn credentials(&self) -> &str {
        json_text(&self.credentials)
    }
}

/// Appends `text` as a JSON string literal.
fn push_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(out, text);
}

/// The JSON built above is UTF-8 (JSON punctuation around escaped `&str`s).
fn json_text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("[]")
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn read_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<CallRecord> {
    let headers: Option<String> = row.get(16)?;
    let credentials: Option<String> = row.get(17)?;
    let notes: Option<String> = row.get(4)?;
    let capture: Option<String> = row.get(2)?;
    Ok(CallRecord {
        id: row.get(0)?,
        time_unix_ns: row.get(1)?,
        capture: capture.as_deref().and_then(Capture::from_name),
        partial: row.get(3)?,
        notes: notes
            .map(|n| n.split("; ").map(str::to_string).collect())
            .unwrap_or_default(),
        client_address: row.get(5)?,
        client_port: row.get(6)?,
        server_port: row.get(7)?,
        method: row.get(8)?,
        path: row.get(9)?,
        http_version: row.get(10)?,
        status: row.get(11)?,
        duration_ms: row.get(12)?,
        response_start_ms: row.get(13)?,
        request_bytes: row.get::<_, Option<i64>>(14)?.map(|v| v.max(0) as u64),
        response_bytes: row.get::<_, Option<i64>>(15)?.map(|v| v.max(0) as u64),
        headers: headers
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        credentials: credentials
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default(),
        key_id: row.get(18)?,
        key_name: row.get(19)?,
        model: row.get(20)?,
        upstream_model: row.get(21)?,
        provider: row.get(22)?,
        provider_kind: row.get(23)?,
        upstream_status: row.get(24)?,
        stream: row.get(25)?,
        input_tokens: row.get::<_, Option<i64>>(26)?.map(|v| v.max(0) as u64),
        output_tokens: row.get::<_, Option<i64>>(27)?.map(|v| v.max(0) as u64),
        first_chunk_ms: row.get(28)?,
        error: row.get(29)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::record::{CredentialEntry, GatewayFacts};

    fn record(n: i64, status: u16, model: &str) -> CallEntry {
        CallEntry {
            time_unix_ns: crate::time::unix_nanos(SystemTime::now()) + n,
            capture: Some(Capture::Userspace),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(status),
            facts: GatewayFacts {
                model: Some(model.into()),
                key_id: Some("key_1".into()),
                key_name: Some("alice".into()),
                ..GatewayFacts::default()
            },
            headers: vec![("user-agent".into(), "te\"st\n\u{1}é".into())],
            credentials: vec![CredentialEntry {
                header: "authorization",
                scheme: "bearer",
                fingerprint: 0x0011_2233_aabb_ccdd,
            }],
            notes: vec!["a".into(), "b".into()],
            client: Some(("::1".parse().unwrap(), 4242)),
            duration_ns: Some(1_500_000),
            input_tokens: Some(3),
            ..CallEntry::default()
        }
    }

    #[test]
    fn stores_and_filters_records() {
        let dir = std::env::temp_dir().join(format!("apx-logs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = LogStore::open(&dir.join("logs.db")).unwrap();
        store
            .insert(
                &[
                    record(1, 200, "a"),
                    record(2, 429, "b"),
                    record(3, 503, "a"),
                ],
                &[("kernel.records".to_string(), 7)],
            )
            .unwrap();
        assert_eq!(
            store.counters().unwrap(),
            vec![("kernel.records".to_string(), 7)]
        );
        let all = store.query(&LogQuery::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0].headers,
            vec![("user-agent".to_string(), "te\"st\n\u{1}é".to_string())]
        );
        assert_eq!(all[0].notes, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(all[0].client_address.as_deref(), Some("::1"));
        assert_eq!(all[0].client_port, Some(4242));
        assert_eq!(all[0].duration_ms, Some(1.5));
        assert_eq!(all[0].credentials[0].header, "authorization");
        assert_eq!(all[0].credentials[0].scheme, "bearer");
        assert_eq!(all[0].credentials[0].fingerprint, "00112233aabbccdd");
        assert_eq!(all[0].input_tokens, Some(3));
        let by_model = LogQuery {
            model: Some("a".into()),
            ..LogQuery::default()
        };
        assert_eq!(store.query(&by_model).unwrap().len(), 2);
        let errors = LogQuery {
            status: StatusFilter::parse("5xx"),
            ..LogQuery::default()
        };
        assert_eq!(store.query(&errors).unwrap()[0].status, Some(503));
        let by_key = LogQuery {
            key: Some("alice".into()),
            limit: Some(1),
            ..LogQuery::default()
        };
        let newest = store.query(&by_key).unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].status, Some(503));
        let after = LogQuery {
            after_id: Some(all[1].id),
            ..LogQuery::default()
        };
        assert_eq!(store.query(&after).unwrap().len(), 1);
        let by_path = LogQuery {
            path: Some("/v1/chat".into()),
            ..LogQuery::default()
        };
        assert_eq!(store.query(&by_path).unwrap().len(), 3);
        let none = LogQuery {
            path: Some("/v1/messages".into()),
            ..LogQuery::default()
        };
        assert!(store.query(&none).unwrap().is_empty());

        let mut old = record(0, 200, "old");
        old.time_unix_ns -= 3_600 * 1_000_000_000;
        store.insert(&[old], &[]).unwrap();
        assert_eq!(store.trim(Duration::from_secs(60), u64::MAX).unwrap(), 1);
        assert_eq!(store.count().unwrap(), 3);
        assert!(store.trim(Duration::from_secs(3600), 0).unwrap() >= 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn status_filters_parse() {
        assert_eq!(StatusFilter::parse("429"), Some(StatusFilter::Exact(429)));
        assert_eq!(StatusFilter::parse("5XX"), Some(StatusFilter::Class(5)));
        assert_eq!(StatusFilter::parse("9xx"), None);
        assert_eq!(StatusFilter::parse("abc"), None);
    }
}
