-- wrk script for the apx benchmark: one fixed POST, exact percentiles.
--
-- Inputs come from the environment (set by run.py):
--   BENCH_PATH  request path, e.g. /v1/chat/completions
--   BENCH_AUTH  value of the Authorization header ("" = none)
--   BENCH_BODY  request body (JSON)
--   BENCH_HEADERS  more headers, one "Name: value" per line (the workload's)
--   BENCH_DELAY_MS  if > 0, each connection waits this long before each
--                   request (paced, unsaturated load)
--
-- done() prints one line `BENCH_JSON {...}` with latencies in microseconds.

wrk.method = "POST"
wrk.path = os.getenv("BENCH_PATH") or "/"
wrk.body = os.getenv("BENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH") or ""
if auth ~= "" then
  wrk.headers["Authorization"] = auth
end
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local name, value = line:match("^([^:]+):%s*(.*)$")
  if name then
    wrk.headers[name] = value
  end
end

local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
if pace > 0 then
  function delay()
    return pace
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d," ..
    "\"p50_us\":%d,\"p90_us\":%d,\"p99_us\":%d,\"p999_us\":%d," ..
    "\"mean_us\":%.3f,\"max_us\":%d,\"min_us\":%d," ..
    "\"errors_connect\":%d,\"errors_read\":%d,\"errors_write\":%d," ..
    "\"errors_status\":%d,\"errors_timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max, latency.min,
    e.connect, e.read, e.write, e.status, e.timeout))
end
