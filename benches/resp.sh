#!/usr/bin/env bash
# examples/resp_server (one worker thread) beside Debian's redis-server, driven by
# redis-benchmark: PING (inline and multibulk), SET and GET from 50 clients, without pipelining
# and with -P 16, in interleaved rounds. Prints each server's median requests per second, its
# CPU time per request, and the ratios resp_server / redis-server.
#
#   benches/resp.sh                                   # 5 rounds, 200,000 / 2,000,000 requests
#   ROUNDS=3 REQUESTS=100000 PIPELINED_REQUESTS=1000000 benches/resp.sh
#   PIPELINES=1 RAW=1 benches/resp.sh                # without pipelining only; every run shown
#
# Pinning (taskset): both servers on core SERVER_CORE (0), redis-benchmark on BENCH_CORE (1):
# one core each for server and benchmark, as the issue's targets are stated. The servers run side
# by side the whole time but only one is driven at a time: each round runs every test on
# resp_server, then on redis-server (the order alternates between rounds), so that a slow spell
# of the shared machine hits both. redis-server runs with `--save "" --appendonly no` (no
# persistence, as resp_server has none) on a free port of its own, and is stopped at the end.
# Needs redis-server and redis-tools (apt-get install redis-server redis-tools) and taskset.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-5}
requests=${REQUESTS:-200000}
pipelined_requests=${PIPELINED_REQUESTS:-2000000}
pipelines=${PIPELINES:-"1 16"}
server_core=${SERVER_CORE:-0}
bench_core=${BENCH_CORE:-1}
clients=50

for tool in redis-server redis-benchmark redis-cli taskset; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "resp.sh: $tool is missing (apt-get install redis-server redis-tools util-linux)" >&2
    exit 1
  }
done

echo "== building resp_server (release)" >&2
cargo build --release --example resp_server >&2
exe=target/release/examples/resp_server

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

taskset -c "$server_core" "$exe" --listen 127.0.0.1:0 --threads 1 >"$work/resp.log" &
pids+=($!)
resp_pid=$!
for _ in $(seq 100); do grep -q '^listening on ' "$work/resp.log" && break; sleep 0.05; done
resp_port=$(sed -n 's/^listening on 127.0.0.1://p' "$work/resp.log")
[ -n "$resp_port" ] || { echo "resp.sh: resp_server did not start" >&2; exit 1; }

# A port nothing listens on: redis-server cannot be asked to pick one and say which.
redis_port=""
for _ in $(seq 50); do
  candidate=$((20000 + RANDOM % 30000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
    redis_port=$candidate
    break
  fi
done
[ -n "$redis_port" ] || { echo "resp.sh: no free port found" >&2; exit 1; }
taskset -c "$server_core" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" \
  --appendonly no --daemonize no --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
for _ in $(seq 100); do redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$redis_port" PING >/dev/null || { echo "resp.sh: redis-server did not start" >&2; exit 1; }

# CPU time (user + system) of process $1 so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One redis-benchmark run against port $1 with pipeline $2 and $3 requests; appends
# "server pipeline test rps cpu_ticks" lines to $work/results for server name $4 (pid $5).
run() {
  local port=$1 pipeline=$2 count=$3 name=$4 pid=$5
  for test in PING_INLINE PING_MBULK SET GET; do
    local before after line
    before=$(cpu_ticks "$pid")
    line=$(taskset -c "$bench_core" redis-benchmark -p "$port" -c "$clients" -n "$count" \
      -P "$pipeline" -t "${test,,}" --csv 2>/dev/null | sed -n '2p')
    after=$(cpu_ticks "$pid")
    local rps
    rps=$(echo "$line" | cut -d, -f2 | tr -d '"')
    echo "$name $pipeline $test $rps $((after - before)) $count" >>"$work/results"
  done
}

echo "== resp_server on 127.0.0.1:$resp_port, redis-server on 127.0.0.1:$redis_port;" \
  "servers on core $server_core, redis-benchmark on core $bench_core; $rounds rounds" >&2
for round in $(seq "$rounds"); do
  for pipeline in $pipelines; do
    count=$requests
    [ "$pipeline" = 1 ] || count=$pipelined_requests
    if [ $((round % 2)) = 1 ]; then
      run "$resp_port" "$pipeline" "$count" resp_server "$resp_pid"
      run "$redis_port" "$pipeline" "$count" redis-server "$redis_pid"
    else
      run "$redis_port" "$pipeline" "$count" redis-server "$redis_pid"
      run "$resp_port" "$pipeline" "$count" resp_server "$resp_pid"
    fi
  done
  echo "   round $round of $rounds done" >&2
done

[ -z "${RAW:-}" ] || { echo "server pipeline test requests/s cpu_ticks requests"; cat "$work/results"; }
ticks=$(getconf CLK_TCK)
# Medians per (server, pipeline, test): requests per second and CPU microseconds per request.
awk -v ticks="$ticks" '
  { key = $1 " " $2 " " $3; n[key]++; rps[key, n[key]] = $4; cpu[key, n[key]] = $5 * 1e6 / ticks / $6 }
  function median(arr, key, count,   i, j, v, t) {
    for (i = 1; i <= count; i++) v[i] = arr[key, i]
    for (i = 1; i <= count; i++) for (j = i + 1; j <= count; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
    return count % 2 ? v[(count + 1) / 2] : (v[count / 2] + v[count / 2 + 1]) / 2
  }
  END {
    printf "%-8s %-12s %14s %14s %7s %12s %12s %7s\n", "pipeline", "test", "redis-server/s", "resp_server/s", "ratio", "redis us/req", "resp us/req", "ratio"
    split("1 16", pipelines, " "); split("PING_INLINE PING_MBULK SET GET", tests, " ")
    for (p = 1; p <= 2; p++) for (t = 1; t <= 4; t++) {
      r = "redis-server " pipelines[p] " " tests[t]; s = "resp_server " pipelines[p] " " tests[t]
      if (!(r in n)) continue
      rr = median(rps, r, n[r]); sr = median(rps, s, n[s]); rc = median(cpu, r, n[r]); sc = median(cpu, s, n[s])
      printf "%-8s %-12s %14.0f %14.0f %7.2f %12.2f %12.2f %7.2f\n", "-P " pipelines[p], tests[t], rr, sr, sr / rr, rc, sc, sc / rc
    }
  }' "$work/results"
echo "(ratio of requests per second: resp_server / redis-server, higher is better; of CPU per" \
  "request: resp_server / redis-server, lower is better; medians of $rounds rounds)"
