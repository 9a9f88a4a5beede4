//! The request log store: one SQLite file (`logs.db`) in WAL mode, written in
//! batches by the store writer thread and read by `apx logs`.
//!
//! Each batch is one row of `log_blocks` (see [`block`] for why and how it
//! is encoded): calls are numbered in the order they were stored, and a
//! block's id is the number of its first call. `log_terms` indexes blocks by
//! key, key name, model, status, status class and path, and `last_ns`/`first_ns`
//! bound the request start times inside a block, so a query reads only the
//! blocks that can match and filters their calls exactly.

pub mod block;

use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use self::block::BlockEncoder;
use super::{StoreError, open_sqlite};
use crate::logging::record::{CallEntry, CallRecord};

/// Calls per block at most: a longer batch is split. Queries rely on it to
/// find the block holding a given call id by a range of block ids.
pub const BLOCK_CALLS: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_blocks (
    id       INTEGER PRIMARY KEY,  -- id of the block's first call
    count    INTEGER NOT NULL,     -- calls in the block: ids id .. id+count-1
    first_ns INTEGER NOT NULL,     -- earliest request start in the block
    last_ns  INTEGER NOT NULL,     -- latest request start in the block
    data     BLOB NOT NULL         -- the calls, encoded (store/logs/block.rs)
);
CREATE INDEX IF NOT EXISTS log_blocks_by_time ON log_blocks(last_ns);
CREATE TABLE IF NOT EXISTS log_terms (
    block_id INTEGER NOT NULL,
    term     TEXT NOT NULL,        -- key:ID name:NAME model:M status:S class:C
                                   -- capture:ebpf|userspace|none partial
                                   -- path:P paths:many
    calls    INTEGER NOT NULL,     -- calls of the block with this term
    PRIMARY KEY (block_id, term)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS log_terms_by_term ON log_terms(term, block_id);
CREATE TABLE IF NOT EXISTS log_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);";

/// `log_meta` row: the id the next stored call gets. Kept apart from the
/// blocks so numbering goes on after retention deleted every block, and a
/// `--follow` reader never sees ids reused.
const NEXT_CALL_ID: &str = "next_call_id";

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
    /// Kept so its buffers are reused from batch to batch.
    encoder: BlockEncoder,
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

    /// Blocks that can hold a call whose path starts with `prefix`: one
    /// with a path term in the prefix's range, one with more paths than
    /// it has terms for, or one written before paths had terms.
    fn add_path_prefix(&mut self, prefix: &str) {
        let low = block::path_term(prefix);
        let first = self.values.len() + 1;
        self.values.push(SqlValue::Text(low.clone()));
        let in_range = match prefix_upper_bound(&low) {
            Some(high) => {
                self.values.push(SqlValue::Text(high));
                format!("term >= ?{first} AND term < ?{}", first + 1)
            }
            None => format!("term >= ?{first}"),
        };
        let (path, many) = (block::PATH_TERM, block::MANY_PATHS_TERM);
        let any_path = prefix_upper_bound(path).unwrap_or_default();
        self.conditions.push(format!(
            "(id IN (SELECT block_id FROM log_terms WHERE {in_range}) \
             OR id IN (SELECT block_id FROM log_terms WHERE term = '{many}') \
             OR NOT EXISTS (SELECT 1 FROM log_terms AS t WHERE t.block_id = log_blocks.id \
                            AND t.term >= '{path}' AND t.term < '{any_path}'))"
        ));
    }

    /// Blocks that hold a call with one of `terms`.
    fn add_terms(&mut self, terms: &[String]) {
        let first = self.values.len() + 1;
        self.values
            .extend(terms.iter().map(|t| SqlValue::Text(t.clone())));
        let placeholders: Vec<String> = (first..first + terms.len())
            .map(|n| format!("?{n}"))
            .collect();
        self.conditions.push(format!(
            "id IN (SELECT block_id FROM log_terms WHERE term IN ({}))",
            placeholders.join(", ")
        ));
    }
}

impl LogQuery {
    /// The conditions on `log_blocks` that keep every block holding a
    /// matching call (and skip most others).
    fn block_filters(&self) -> Filters {
        let mut filters = Filters::default();
        if let Some(since) = self.since_ns {
            filters.add("last_ns >= {}", since.into());
        }
        if let Some(until) = self.until_ns {
            filters.add("first_ns <= {}", until.into());
        }
        match self.status {
            Some(StatusFilter::Exact(code)) => filters.add_terms(&[block::status_term(code)]),
            Some(StatusFilter::Class(class)) => {
                filters.add_terms(&[block::status_class_term(class)])
            }
            None => {}
        }
        if let Some(model) = &self.model {
            filters.add_terms(&[block::model_term(model)]);
        }
        if let Some(key) = &self.key {
            filters.add_terms(&[block::key_term(key), block::key_name_term(key)]);
        }
        if let Some(path) = &self.path {
            // The terms hold what `path_key` keeps of a path: the prefix
            // asked for, cut the same way, is a prefix of the term of every
            // path that starts with it.
            filters.add_path_prefix(block::path_key(path));
        }
        if let Some(after) = self.after_id {
            // A block holding a call after `after` starts at most
            // BLOCK_CALLS - 1 ids before it: a range of the primary key.
            filters.add(
                &format!("id > {{}} - {BLOCK_CALLS} AND id + count - 1 > {{}}"),
                after.into(),
            );
        }
        filters
    }

    /// No filter at all (a limit is not one).
    fn matches_every_call(&self) -> bool {
        let LogQuery {
            since_ns,
            until_ns,
            status,
            model,
            key,
            path,
            after_id,
            limit: _,
        } = self;
        since_ns.is_none()
            && until_ns.is_none()
            && status.is_none()
            && model.is_none()
            && key.is_none()
            && path.is_none()
            && after_id.is_none()
    }

    /// The one index term a call must have to match, when the query asks
    /// for nothing else (a status, a status class or a model): a block's
    /// matches are then its count of that term.
    fn only_term(&self) -> Option<String> {
        let alone = LogQuery {
            status: None,
            model: None,
            limit: None,
            ..self.clone()
        };
        if !alone.matches_every_call() {
            return None;
        }
        match (self.status, &self.model) {
            (Some(StatusFilter::Exact(code)), None) => Some(block::status_term(code)),
            (Some(StatusFilter::Class(class)), None) => Some(block::status_class_term(class)),
            (None, Some(model)) => Some(block::model_term(model)),
            _ => None,
        }
    }

    /// The exact test, on a decoded call.
    fn matches(&self, record: &CallRecord) -> bool {
        let time = record.time_unix_ns;
        self.since_ns.is_none_or(|since| time >= since)
            && self.until_ns.is_none_or(|until| time <= until)
            && self.after_id.is_none_or(|after| record.id > after)
            && match self.status {
                Some(StatusFilter::Exact(code)) => record.status == Some(code),
                Some(StatusFilter::Class(class)) => record.status.map(|s| s / 100) == Some(class),
                None => true,
            }
            && self
                .model
                .as_deref()
                .is_none_or(|model| record.model.as_deref() == Some(model))
            && self.key.as_deref().is_none_or(|key| {
                record.key_id.as_deref() == Some(key) || record.key_name.as_deref() == Some(key)
            })
            && self
                .path
                .as_deref()
                .is_none_or(|prefix| record.path.starts_with(prefix))
    }
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        let conn = open_sqlite(path)?;
        conn.execute_batch(SCHEMA)?;
        Ok(LogStore {
            conn,
            encoder: BlockEncoder::default(),
        })
    }

    /// Bounds SQLite's page cache of this connection (the writer's: the
    /// default of 2 MiB is more than appending blocks needs).
    pub fn limit_cache_kib(&self, kib: i64) -> Result<(), StoreError> {
        // A negative cache_size is a size in KiB rather than in pages.
        self.conn.pragma_update(None, "cache_size", -kib)?;
        Ok(())
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
            let mut next_id = next_call_id(&tx)?;
            let mut add_block = tx.prepare_cached(
                "INSERT INTO log_blocks (id, count, first_ns, last_ns, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut add_term = tx.prepare_cached(
                "INSERT INTO log_terms (block_id, term, calls) VALUES (?1, ?2, ?3)",
            )?;
            for calls in records.chunks(BLOCK_CALLS) {
                let (data, summary) = self.encoder.encode(calls);
                add_block.execute(rusqlite::params![
                    next_id,
                    summary.count as i64,
                    summary.first_ns,
                    summary.last_ns,
                    data,
                ])?;
                for (term, calls) in &summary.terms {
                    add_term.execute(rusqlite::params![next_id, term, clamp_i64(*calls)])?;
                }
                next_id += calls.len() as i64;
            }
            tx.prepare_cached(
                "INSERT INTO log_meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            )?
            .execute(rusqlite::params![NEXT_CALL_ID, next_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records matching `query`: the newest `limit` ones, oldest first (or
    /// every one after `after_id`, oldest first, for following), in the
    /// order they were stored (which is the order the calls ended).
    pub fn query(&self, query: &LogQuery) -> Result<Vec<CallRecord>, StoreError> {
        let mut found = Vec::new();
        self.for_each_match(query, |record| {
            found.push(record);
            Ok::<(), StoreError>(())
        })?;
        Ok(found)
    }

    /// The records [`query`](Self::query) returns, handed to `emit` one at
    /// a time, so that `apx logs --limit 1000000` holds one block of calls
    /// at a time, not a million. Returns how many were handed out.
    pub fn for_each_match<E: From<StoreError>>(
        &self,
        query: &LogQuery,
        mut emit: impl FnMut(CallRecord) -> Result<(), E>,
    ) -> Result<usize, E> {
        let limit = query
            .limit
            .unwrap_or(if query.after_id.is_some() { 10_000 } else { 50 })
            as usize;
        let (blocks, older) = self.blocks_to_read(query, limit)?;
        let mut handed = 0;
        for (n, id) in blocks.into_iter().enumerate() {
            // Only the first block can hold older matches than wanted.
            let skip = if n == 0 { older } else { 0 };
            for call in self.read_matches(id, query)?.into_iter().skip(skip) {
                if handed == limit {
                    return Ok(handed);
                }
                emit(call)?;
                handed += 1;
            }
        }
        Ok(handed)
    }

    /// The blocks to read, oldest first, for the first (following) or the
    /// newest `limit` calls that `query` matches, and how many matches of
    /// the first block are older than those.
    ///
    /// For the newest, blocks are counted newest first until they hold
    /// `limit` matches: from their stored counts when nothing is
    /// filtered, else by decoding them (read again to be handed out; a
    /// block trimmed in between then gives nothing).
    fn blocks_to_read(
        &self,
        query: &LogQuery,
        limit: usize,
    ) -> Result<(Vec<i64>, usize), StoreError> {
        // Block ids first, data one block at a time: if SQLite sorts the
        // matching blocks (e.g. found through an index), it sorts ids only,
        // and blocks past the limit are never read.
        let (sql, values) = candidate_blocks(query);
        let mut statement = self.conn.prepare(&sql)?;
        let mut rows = statement.query(params_from_iter(values.iter()))?;
        let mut blocks = Vec::new();
        if query.after_id.is_some() {
            // Oldest first already: reading stops at the limit.
            while let Some(row) = rows.next()? {
                blocks.push(row.get(0)?);
            }
            return Ok((blocks, 0));
        }
        let every_call = query.matches_every_call();
        let one_term = query.only_term();
        let mut term_calls = self
            .conn
            .prepare_cached("SELECT calls FROM log_terms WHERE block_id = ?1 AND term = ?2")?;
        let mut counted = 0;
        while counted < limit {
            let Some(row) = rows.next()? else { break };
            let id: i64 = row.get(0)?;
            let matches: i64 = if every_call {
                row.get(1)?
            } else if let Some(term) = &one_term {
                term_calls
                    .query_row(params![id, term], |row| row.get(0))
                    .optional()?
                    .unwrap_or(0)
            } else {
                i64::try_from(self.read_matches(id, query)?.len()).unwrap_or(i64::MAX)
            };
            let matches = usize::try_from(matches).unwrap_or(0);
            if matches > 0 {
                blocks.push(id);
                counted += matches;
            }
        }
        blocks.reverse();
        Ok((blocks, counted.saturating_sub(limit)))
    }

    /// The calls of block `id` that `query` matches (none if the block was
    /// trimmed meanwhile).
    fn read_matches(&self, id: i64, query: &LogQuery) -> Result<Vec<CallRecord>, StoreError> {
        let mut read_block = self
            .conn
            .prepare_cached("SELECT data FROM log_blocks WHERE id = ?1")?;
        let Some(data) = read_block
            .query_row([id], |row| row.get::<_, Vec<u8>>(0))
            .optional()?
        else {
            return Ok(Vec::new());
        };
        let mut calls =
            block::decode(&data, id).map_err(|source| StoreError::Block { block: id, source })?;
        calls.retain(|call| query.matches(call));
        Ok(calls)
    }

    /// The id of the newest call ever stored, 0 when none was.
    pub fn last_id(&self) -> Result<i64, StoreError> {
        Ok(next_call_id(&self.conn)? - 1)
    }

    /// Calls in the store.
    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COALESCE(SUM(count), 0) FROM log_blocks",
            [],
            |row| row.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many stored calls have each term (`status:200`, `class:5`,
    /// `capture:ebpf`, `partial`, `model:…`, `key:…`), by term.
    pub fn term_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.named_counts("SELECT term, SUM(calls) FROM log_terms GROUP BY term ORDER BY term")
    }

    /// Stored calls by capture (`capture:ebpf`), status class (`status:2xx`)
    /// and `partial`: the summary `apx logs --stats` shows. Per-key and
    /// per-model counts are in the same index but belong to other views.
    pub fn call_breakdown(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .term_counts()?
            .into_iter()
            .filter_map(|(term, calls)| {
                if let Some(class) = term.strip_prefix(block::CLASS_TERM) {
                    Some((format!("status:{class}xx"), calls))
                } else if term.starts_with(block::CAPTURE_TERM) || term == block::PARTIAL_TERM {
                    Some((term, calls))
                } else {
                    None
                }
            })
            .collect())
    }

    /// Deletes the blocks whose calls all started more than `retention`
    /// ago, then the oldest blocks while the data takes more than
    /// `max_bytes`. Returns how many calls were deleted.
    pub fn trim(&mut self, retention: Duration, max_bytes: u64) -> Result<u64, StoreError> {
        let cutoff = crate::time::unix_nanos(SystemTime::now() - retention);
        let mut deleted = self.trim_legacy_calls(cutoff, max_bytes)?;
        deleted += self.delete_blocks("last_ns < ?1", cutoff)?;
        for _ in 0..32 {
            if self.used_bytes()? <= max_bytes {
                break;
            }
            let blocks: i64 =
                self.conn
                    .query_row("SELECT COUNT(*) FROM log_blocks", [], |row| row.get(0))?;
            if blocks == 0 {
                break;
            }
            deleted += self.delete_blocks(
                "id IN (SELECT id FROM log_blocks ORDER BY id ASC LIMIT ?1)",
                (blocks / 10).max(1),
            )?;
        }
        Ok(deleted)
    }

    /// Applies retention to the `calls` table an earlier apx wrote (a row
    /// per call): its rows age out like blocks do, and since they are older
    /// than every block, the whole table goes first when space is short.
    fn trim_legacy_calls(&mut self, cutoff: i64, max_bytes: u64) -> Result<u64, StoreError> {
        let exists: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls')",
            [],
            |row| row.get(0),
        )?;
        if !exists {
            return Ok(0);
        }
        let mut deleted =
            self.conn
                .execute("DELETE FROM calls WHERE time_ns < ?1", [cutoff])? as u64;
        let left: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM calls", [], |row| row.get(0))?;
        if left == 0 || self.used_bytes()? > max_bytes {
            deleted += u64::try_from(left).unwrap_or(0);
            self.conn.execute_batch("DROP TABLE calls")?;
        }
        Ok(deleted)
    }

    /// Deletes the blocks matching `condition` (one parameter) and their
    /// terms; returns how many calls they held.
    fn delete_blocks(&mut self, condition: &str, value: i64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let gone: Vec<(i64, i64)> = tx
            .prepare(&format!(
                "DELETE FROM log_blocks WHERE {condition} RETURNING id, count"
            ))?
            .query_map([value], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        {
            let mut terms = tx.prepare("DELETE FROM log_terms WHERE block_id = ?1")?;
            for (id, _) in &gone {
                terms.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(gone
            .iter()
            .map(|(_, count)| u64::try_from(*count).unwrap_or(0))
            .sum())
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
        self.named_counts("SELECT name, value FROM counters ORDER BY name")
    }

    /// Rows of (text, count) from `sql`.
    fn named_counts(&self, sql: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
            ))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

/// The ids and call counts of the blocks that can hold calls `query`
/// matches (newest first, or oldest first when following), as SQL and its
/// parameters.
fn candidate_blocks(query: &LogQuery) -> (String, Vec<SqlValue>) {
    let Filters { conditions, values } = query.block_filters();
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let order = if query.after_id.is_some() {
        "ASC"
    } else {
        "DESC"
    };
    let sql = format!("SELECT id, count FROM log_blocks {filter} ORDER BY id {order}");
    (sql, values)
}

/// The least text greater than every text that starts with `prefix`
/// (SQLite compares text by its UTF-8 bytes, which orders as the code
/// points do): the prefix with its last character raised by one, or
/// `None` when no such text exists (every character is `char::MAX`).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value, skipping the surrogates.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The id the next stored call gets (1 in an empty store).
fn next_call_id(conn: &Connection) -> Result<i64, StoreError> {
    let kept: Option<i64> = conn
        .query_row(
            "SELECT value FROM log_meta WHERE name = ?1",
            [NEXT_CALL_ID],
            |row| row.get(0),
        )
        .optional()?;
    Ok(kept.unwrap_or(1).max(1))
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::record::{Capture, CredentialEntry, GatewayFacts};

    /// An empty store in its own directory (removed first if a previous
    /// run left it), named after the test.
    fn fresh_store(name: &str) -> (std::path::PathBuf, LogStore) {
        let dir = std::env::temp_dir().join(format!("apx-logs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = LogStore::open(&dir.join("logs.db")).unwrap();
        (dir, store)
    }

    fn record(n: i64, status: u16, model: &'static str) -> CallEntry {
        CallEntry {
            time_unix_ns: crate::time::unix_nanos(SystemTime::now()) + n,
            capture: Some(Capture::Userspace),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            status: Some(status),
            facts: GatewayFacts {
                model: Some(model),
                key_id: Some("key_1"),
                key_name: Some("alice"),
                ..GatewayFacts::default()
            },
            headers: vec![("user-agent", "te\"st\n\u{1}é".into())],
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
        let (dir, mut store) = fresh_store("test");
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

    /// `--path` reads the blocks that have a path with the prefix, that
    /// had too many paths to index, or that were written before paths were
    /// indexed, and no others; what it finds is exactly what a full scan
    /// would.
    #[test]
    fn path_filters_read_only_the_blocks_that_can_match() {
        let (dir, mut store) = fresh_store("paths");
        let at = |n: i64, path: &str| CallEntry {
            path: path.into(),
            ..record(n, 200, "a")
        };
        let long = format!("/v1/{}", "é".repeat(150));
        let blocks: Vec<Vec<CallEntry>> = vec![
            (0..10).map(|n| at(n, "/v1/chat/completions")).collect(),
            (0..10)
                .map(|n| {
                    at(
                        n,
                        if n < 5 {
                            "/v1/messages?beta=true"
                        } else {
                            "/v1/messages/count_tokens"
                        },
                    )
                })
                .collect(),
            // More distinct paths than a block has terms for; the last one
            // is past the limit.
            (0..=block::PATH_TERMS_PER_BLOCK as i64 + 3)
                .map(|n| at(n, &format!("/nope/{n}")))
                .chain([at(99, "/v1/messages")])
                .collect(),
            vec![at(0, &long)],
            (0..3).map(|n| at(n, "/v1/messages/legacy")).collect(),
        ];
        for batch in &blocks {
            store.insert(batch, &[]).unwrap();
        }
        // The last block as an apx without path terms wrote it.
        let legacy: i64 = store
            .conn
            .query_row("SELECT MAX(id) FROM log_blocks", [], |r| r.get(0))
            .unwrap();
        store
            .conn
            .execute(
                "DELETE FROM log_terms WHERE block_id = ?1 AND term LIKE 'path%'",
                [legacy],
            )
            .unwrap();
        let terms = store.term_counts().unwrap();
        // Past the limit: /nope/16 to /nope/19 and /v1/messages.
        assert!(terms.contains(&(block::MANY_PATHS_TERM.to_string(), 5)));
        let path_terms = terms.iter().filter(|(t, _)| t.starts_with("path:")).count();
        assert_eq!(path_terms, 1 + 2 + block::PATH_TERMS_PER_BLOCK + 1);

        let candidates = |path: &str| {
            let query = LogQuery {
                path: Some(path.to_string()),
                ..LogQuery::default()
            };
            let (sql, values) = candidate_blocks(&query);
            let mut statement = store.conn.prepare(&sql).unwrap();
            let ids = statement
                .query_map(params_from_iter(values.iter()), |row| row.get::<_, i64>(0))
                .unwrap();
            ids.count()
        };
        let found = |path: &str| {
            let query = LogQuery {
                path: Some(path.to_string()),
                limit: Some(1000),
                ..LogQuery::default()
            };
            store.query(&query).unwrap().len()
        };
        let long_prefix: String = long.chars().take(140).collect();
        // (prefix, blocks read, calls found): the overflowing and the
        // legacy block are read by every query.
        let cases = [
            ("/v1/messages", 3, 5 + 5 + 1 + 3),
            ("/v1/messages?beta", 3, 5),
            ("/v1/chat", 3, 10),
            (long_prefix.as_str(), 3, 1),
            ("/nope/1", 2, 1 + 10),
            ("/zzz", 2, 0),
            ("", 5, 10 + 10 + 21 + 1 + 3),
        ];
        for (prefix, read, calls) in cases {
            assert_eq!(
                (candidates(prefix), found(prefix)),
                (read, calls),
                "{prefix}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Whatever the limit, a query hands out the newest `limit` matches,
    /// oldest first, across blocks, and following hands out the first
    /// `limit` after the id: what filtering every stored call would give.
    #[test]
    fn limits_across_blocks_give_what_a_full_scan_gives() {
        let (dir, mut store) = fresh_store("limits");
        // 1300 calls: blocks of 512, 512 and 276; every third one a 503.
        let batch: Vec<CallEntry> = (0..1300)
            .map(|n| record(n, if n % 3 == 0 { 503 } else { 200 }, "a"))
            .collect();
        store.insert(&batch, &[]).unwrap();
        let errors: Vec<i64> = (0..1300).filter(|n| n % 3 == 0).map(|n| n + 1).collect();
        let ids = |query: &LogQuery| -> Vec<i64> {
            store.query(query).unwrap().iter().map(|r| r.id).collect()
        };
        for limit in [1, 50, 171, 172, 200, 434, 600, 10_000] {
            let newest = LogQuery {
                status: Some(StatusFilter::Exact(503)),
                limit: Some(limit),
                ..LogQuery::default()
            };
            let start = errors.len().saturating_sub(limit as usize);
            assert_eq!(ids(&newest), errors[start..], "newest {limit}");
            // Counted from the index term (a status, a class, a model), or
            // by decoding when another filter comes with it.
            let class = LogQuery {
                status: Some(StatusFilter::Class(5)),
                ..newest.clone()
            };
            assert_eq!(ids(&class), errors[start..], "class, newest {limit}");
            let recent = LogQuery {
                since_ns: Some(0),
                ..newest.clone()
            };
            assert_eq!(ids(&recent), errors[start..], "since, newest {limit}");
            let model = LogQuery {
                model: Some("a".into()),
                limit: Some(limit),
                ..LogQuery::default()
            };
            let first = 1300_i64.saturating_sub(i64::from(limit)) + 1;
            assert_eq!(
                ids(&model),
                (first.max(1)..=1300).collect::<Vec<_>>(),
                "model {limit}"
            );
            // No filter: blocks counted without being decoded.
            let unfiltered = LogQuery {
                limit: Some(limit),
                ..LogQuery::default()
            };
            assert_eq!(ids(&unfiltered), (first.max(1)..=1300).collect::<Vec<_>>());
            for after in [0, 511, 700] {
                let following = LogQuery {
                    after_id: Some(after),
                    ..newest.clone()
                };
                let wanted: Vec<i64> = errors
                    .iter()
                    .copied()
                    .filter(|id| *id > after)
                    .take(limit as usize)
                    .collect();
                assert_eq!(ids(&following), wanted, "after {after}, limit {limit}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn prefix_upper_bounds_follow_utf8_order() {
        assert_eq!(prefix_upper_bound("path:").as_deref(), Some("path;"));
        assert_eq!(
            prefix_upper_bound("a\u{d7ff}").as_deref(),
            Some("a\u{e000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10ffff}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10ffff}"), None);
        assert_eq!(prefix_upper_bound(""), None);
        for prefix in ["path:/v1/", "x\u{7f}", "\u{ff}", "a\u{d7ff}"] {
            let high = prefix_upper_bound(prefix).unwrap();
            assert!(prefix.as_bytes() < high.as_bytes());
            assert!(format!("{prefix}\u{10ffff}\u{10ffff}").as_bytes() < high.as_bytes());
        }
    }

    #[test]
    fn ids_run_on_across_blocks_and_trims() {
        let (dir, mut store) = fresh_store("blocks");
        assert_eq!(store.last_id().unwrap(), 0);
        // 1300 calls in one batch: split into blocks of 512, 512 and 276.
        let batch: Vec<CallEntry> = (0..1300)
            .map(|n| {
                record(
                    n,
                    if n % 100 == 7 { 503 } else { 200 },
                    if n < 600 { "a" } else { "b" },
                )
            })
            .collect();
        store.insert(&batch, &[]).unwrap();
        store.insert(&[record(2000, 200, "c")], &[]).unwrap();
        assert_eq!(store.count().unwrap(), 1301);
        assert_eq!(store.last_id().unwrap(), 1301);
        let blocks: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM log_blocks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(blocks, 4);
        let terms = store.term_counts().unwrap();
        let count = |term: &str| terms.iter().find(|(t, _)| t == term).map_or(0, |(_, n)| *n);
        assert_eq!(count("status:503"), 13);
        assert_eq!(count("class:2"), 1288);
        assert_eq!(count("model:b"), 700);
        assert_eq!(count("capture:userspace"), 1301);
        assert_eq!(
            store.call_breakdown().unwrap(),
            vec![
                ("capture:userspace".to_string(), 1301),
                ("status:2xx".to_string(), 1288),
                ("status:5xx".to_string(), 13),
            ]
        );

        // The newest N span blocks and come back oldest first.
        let newest = store
            .query(&LogQuery {
                limit: Some(600),
                ..LogQuery::default()
            })
            .unwrap();
        let ids: Vec<i64> = newest.iter().map(|r| r.id).collect();
        assert_eq!(ids, (702..=1301).collect::<Vec<_>>());
        // Following from the middle of a block.
        let after = store
            .query(&LogQuery {
                after_id: Some(1000),
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(after.first().map(|r| r.id), Some(1001));
        assert_eq!(after.len(), 301);
        let followed = store
            .query(&LogQuery {
                after_id: Some(510),
                limit: Some(5),
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(
            followed.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![511, 512, 513, 514, 515]
        );
        // Filters combine the block index with the exact test.
        let errors_of_b = store
            .query(&LogQuery {
                status: Some(StatusFilter::Exact(503)),
                model: Some("b".into()),
                limit: Some(1000),
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(errors_of_b.len(), 7);
        assert!(
            errors_of_b
                .iter()
                .all(|r| r.status == Some(503) && r.model.as_deref() == Some("b"))
        );
        let window = store
            .query(&LogQuery {
                since_ns: Some(batch[100].time_unix_ns),
                until_ns: Some(batch[109].time_unix_ns),
                ..LogQuery::default()
            })
            .unwrap();
        assert_eq!(window.len(), 10);
        assert!(
            store
                .query(&LogQuery {
                    model: Some("nope".into()),
                    ..LogQuery::default()
                })
                .unwrap()
                .is_empty()
        );

        // Retention may delete every block; numbering goes on.
        assert_eq!(store.trim(Duration::from_secs(3600), 0).unwrap(), 1301);
        assert_eq!(store.count().unwrap(), 0);
        let terms: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM log_terms", [], |r| r.get(0))
            .unwrap();
        assert_eq!(terms, 0);
        store.insert(&[record(1, 200, "a")], &[]).unwrap();
        assert_eq!(store.query(&LogQuery::default()).unwrap()[0].id, 1302);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn calls_of_an_earlier_apx_age_out() {
        let dir = std::env::temp_dir().join(format!("apx-logs-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("logs.db");
        {
            let conn = open_sqlite(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE calls (id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL);
                 INSERT INTO calls (time_ns) VALUES (1), (2);",
            )
            .unwrap();
            let now = crate::time::unix_nanos(SystemTime::now());
            conn.execute("INSERT INTO calls (time_ns) VALUES (?1)", [now])
                .unwrap();
        }
        let mut store = LogStore::open(&path).unwrap();
        store.insert(&[record(0, 200, "a")], &[]).unwrap();
        // Two rows are past retention; the recent one stays.
        assert_eq!(store.trim(Duration::from_secs(60), u64::MAX).unwrap(), 2);
        assert_eq!(store.count().unwrap(), 1);
        // Short of space: the old table goes before any block.
        let limit = store.used_bytes().unwrap() - 1;
        assert!(store.trim(Duration::from_secs(60), limit).unwrap() >= 1);
        let legacy: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'calls'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(legacy, 0);
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
