-- Shared by the wrk scripts. setup() numbers the threads (each seeds its random numbers with `tid`).
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set('tid', counter)
end

-- done() prints one JSON line that bench/wrk_runner.py parses.
-- Errors are wrk's non-2xx/3xx responses plus its socket errors (connect, read, write, timeout).
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
