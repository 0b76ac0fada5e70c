-- wrk script: POST a trivial run (echo) with the bench tenant's token.
wrk.method = "POST"
wrk.path = "/v1/runs"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("GUILD_BENCH_TOKEN") or "bench-token")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"tool":"echo","input":{"message":"hello"}}'

local statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  io.write(string.format("runs/s %.0f  p50 %.2f ms  p99 %.2f ms  errors %d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout))
end
