//! `apx logs`: the recorded calls, from the log store the gateway writes.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use apx_gateway::logging::record::CallRecord;
use apx_gateway::store::logs::{LogQuery, LogStore, StatusFilter};

use crate::exit::{self, Failure};
use crate::local::Local;
use crate::ui;

pub const HELP: &str = "Examples:
  apx logs                          # the last 50 calls
  apx logs --since 10m --status 5xx # server errors of the last ten minutes
  apx logs --model gpt-4o --key ci  # one model, one gateway key (name or id)
  apx logs --follow                 # new calls as they are stored
  apx logs --json | jq .            # JSON lines with OpenTelemetry field names
  apx logs --stats                  # records lost, and why

Times: --since/--until take a duration back from now (30s, 10m, 2h, 7d) or
an RFC 3339 time (2026-11-25T08:00:00Z).";

#[derive(clap::Args)]
pub struct Args {
    /// Only calls at or after this time (e.g. 10m, 2h, 2026-11-25T08:00:00Z).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only calls at or before this time.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Only this status (429) or class (5xx).
    #[arg(long, value_name = "CODE")]
    status: Option<String>,
    /// Only calls for this model (as the client named it).
    #[arg(long)]
    model: Option<String>,
    /// Only calls made with this gateway key (name or id).
    #[arg(long)]
    key: Option<String>,
    /// Only paths starting with this (e.g. /v1/messages).
    #[arg(long)]
    path: Option<String>,
    /// How many of the newest matching calls to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Keep printing new calls as they are stored (Ctrl-C to stop).
    #[arg(long, short)]
    follow: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Show the loss counters instead of calls.
    #[arg(long)]
    stats: bool,
}

pub fn run(config_path: &Path, args: Args) -> anyhow::Result<()> {
    // Secrets are not needed to read logs: references are resolved leniently.
    let config = Local::discover(config_path)?.config_lenient()?;
    let path = config.log_store_path();
    if !path.exists() {
        return Err(Failure::new(
            exit::FAILURE,
            format!("no log store at {} yet", path.display()),
        )
        .hint(match config.logging.capture {
            apx_gateway::config::CaptureMode::Off => {
                "logging is off in the config (logging.capture = \"off\")".to_string()
            }
            _ => "start the gateway (apx start) and make a call (apx call echo \"hi\")".to_string(),
        })
        .into());
    }
    let store = LogStore::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    if args.stats {
        return print_stats(&store, args.json);
    }
    let now = SystemTime::now();
    let query = LogQuery {
        since_ns: args
            .since
            .as_deref()
            .map(|t| parse_when(t, now))
            .transpose()?,
        until_ns: args
            .until
            .as_deref()
            .map(|t| parse_when(t, now))
            .transpose()?,
        status: args
            .status
            .as_deref()
            .map(|s| {
                StatusFilter::parse(s).ok_or_else(|| {
                    Failure::new(
                        exit::USAGE,
                        format!("`{s}` is not a status (use e.g. 429 or 5xx)"),
                    )
                })
            })
            .transpose()?,
        model: args.model.clone(),
        key: args.key.clone(),
        path: args.path.clone(),
        after_id: None,
        limit: Some(args.limit),
    };
    // Buffered: a large --limit prints many lines, each its own write
    // through a bare stdout lock.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let horizon = store.last_id()?;
    if !args.json {
        writeln!(out, "{}", ui::bold(&header_line()))?;
    }
    let shown = print_matches(&store, &query, &mut out, args.json)?;
    let mut last_id = follow_position(horizon, shown.last_id, false);
    if !args.follow {
        if shown.count == 0 && !args.json {
            writeln!(out, "{}", ui::dim("(no calls match)"))?;
        }
        out.flush()?;
        return Ok(());
    }
    const FOLLOW_BATCH: u32 = 10_000;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let newer = LogQuery {
            after_id: Some(last_id),
            limit: Some(FOLLOW_BATCH),
            ..query.clone()
        };
        let horizon = store.last_id()?;
        let shown = print_matches(&store, &newer, &mut out, args.json)?;
        let full = shown.count >= FOLLOW_BATCH as usize;
        last_id = follow_position(horizon.max(last_id), shown.last_id, full);
    }
}

/// What one query printed.
struct Shown {
    count: usize,
    /// The id of the last call printed.
    last_id: Option<i64>,
}

/// Where the next `--follow` poll starts: past everything that was stored
/// when the poll began (`horizon`, read before the query), so a filter
/// that matched nothing recently does not make every poll rescan the store
/// from the last match on. When the poll stopped at its limit, the calls
/// after the last one shown are still to come.
fn follow_position(horizon: i64, last_shown: Option<i64>, stopped_at_limit: bool) -> i64 {
    match last_shown {
        Some(last) if stopped_at_limit => last,
        Some(last) => last.max(horizon),
        None => horizon,
    }
}

/// Prints the calls `query` matches as they are read from the store (one
/// block of calls in memory at a time), then flushes.
fn print_matches(
    store: &LogStore,
    query: &LogQuery,
    out: &mut impl Write,
    json: bool,
) -> anyhow::Result<Shown> {
    let mut last_id = None;
    let count = store.for_each_match(query, |record| -> anyhow::Result<()> {
        if json {
            record.write_json(&mut *out)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", table_line(&record))?;
        }
        last_id = Some(record.id);
        Ok(())
    })?;
    out.flush()?;
    Ok(Shown { count, last_id })
}

fn header_line() -> String {
    format!(
        "{} {} {} {} {} {} {} {} {}",
        ui::pad("TIME", 23),
        ui::pad("STATUS", 6),
        ui::pad("METHOD", 6),
        ui::pad("PATH", 26),
        ui::pad("MODEL", 18),
        ui::pad("KEY", 12),
        ui::pad("TOKENS", 11),
        ui::pad("MS", 8),
        "CAPTURE"
    )
}

fn table_line(record: &CallRecord) -> String {
    let time = apx_gateway::time::rfc3339_nanos(record.time_unix_ns);
    let time = time.get(..23).unwrap_or(&time).replace('T', " ");
    let status = record.status.map_or("-".to_string(), |s| s.to_string());
    let status = match record.status {
        Some(s) if s >= 500 => ui::red(&ui::pad(&status, 6)),
        Some(s) if s >= 400 => ui::yellow(&ui::pad(&status, 6)),
        _ => ui::green(&ui::pad(&status, 6)),
    };
    let tokens = match (record.input_tokens, record.output_tokens) {
        (None, None) => "-".to_string(),
        (input, output) => format!(
            "{}/{}",
            input.map_or("-".into(), |n| n.to_string()),
            output.map_or("-".into(), |n| n.to_string())
        ),
    };
    let millis = record
        .duration_ms
        .map_or("-".to_string(), |ms| format!("{ms:.1}"));
    let mut capture = record.capture.map_or("?", |c| c.name()).to_string();
    if record.partial {
        capture.push_str(" partial");
    }
    format!(
        "{} {} {} {} {} {} {} {} {}",
        ui::pad(&time, 23),
        status,
        ui::pad(&record.method, 6),
        ui::pad(&clip(&record.path, 26), 26),
        ui::pad(&clip(record.model.as_deref().unwrap_or("-"), 18), 18),
        ui::pad(&clip(record.key_name.as_deref().unwrap_or("-"), 12), 12),
        ui::pad(&tokens, 11),
        ui::pad(&millis, 8),
        capture
    )
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let kept: String = text.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

fn print_stats(store: &LogStore, json: bool) -> anyhow::Result<()> {
    let counters = store.counters()?;
    let records = store.count()?;
    let breakdown = store.call_breakdown()?;
    if json {
        let map: serde_json::Map<String, serde_json::Value> = counters
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .chain([("records".to_string(), serde_json::json!(records))])
            .chain(
                breakdown
                    .iter()
                    .map(|(k, v)| (format!("records.{k}"), serde_json::json!(v))),
            )
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        println!("records stored: {records}");
        for (term, n) in &breakdown {
            println!("  {term}: {n}");
        }
        for (name, value) in counters {
            println!("{}: {value}", name);
        }
    }
    Ok(())
}

/// `10m` (ago) or an RFC 3339 time, as ns since the Unix epoch.
fn parse_when(text: &str, now: SystemTime) -> anyhow::Result<i64> {
    if let Ok(ago) = apx_gateway::config::units::parse_duration(text) {
        return Ok(apx_gateway::time::unix_nanos(now - ago));
    }
    apx_gateway::time::parse_rfc3339(text).ok_or_else(|| {
        Failure::new(
            exit::USAGE,
            format!("`{text}` is neither a duration (10m, 2h) nor an RFC 3339 time (2026-11-25T08:00:00Z)"),
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_moves_past_calls_that_did_not_match() {
        // Last match long ago, store at 5000: the next poll starts at 5000.
        assert_eq!(follow_position(5000, Some(20), false), 5000);
        assert_eq!(follow_position(5000, None, false), 5000);
        // Calls stored between the horizon and the query are kept.
        assert_eq!(follow_position(5000, Some(5003), false), 5003);
        // A poll cut at its limit resumes right after what it showed.
        assert_eq!(follow_position(9000, Some(20), true), 20);
    }
}
