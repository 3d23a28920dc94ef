#!/usr/bin/env bash
# User-space instructions per echoed 64 B message, counted by valgrind's cachegrind, for the
# switchboard, raw tokio and mio echo servers of benches/echo.rs and the API floor
# (benches/api_floor: raw tokio paying what switchboard's callback API costs by its shape, the
# owned read buffer, the boxed callback futures, the handle's write queue; and api-static, the
# same without boxed futures), at 50 and 1,000 connections. Ratios are to raw tokio, and
# switchboard's to the API floor too: what its engine costs above what any engine offering the
# same callbacks must pay.
#
#   benches/instructions.sh                      # 200,000 messages per run, one run each
#   MESSAGES=20000 RUNS=2 benches/instructions.sh
#   CONNECTIONS="50" KINDS="raw api switchboard" benches/instructions.sh
#   SIZE=4096 CONNECTIONS="50" KINDS="switchboard" benches/instructions.sh   # another message size
#   CHURN=1 MESSAGES=2000 KINDS="raw switchboard" benches/instructions.sh      # per connection
#
# With CHURN=1 the count is per connection instead: the client opens MESSAGES + 1 connections one
# after another, each living as in the echo bench's churn scenario (connect, one 64 B echo,
# half-close, the server's FIN), against a run with one; the difference divided by MESSAGES is
# what a connection's whole life costs the server (accept, task, callbacks, close), in user space.
#
# Each server runs alone under `valgrind --tool=cachegrind --cache-sim=no` on one thread
# (`echo --echo-server KIND --connections C`); the same executable drives it from outside
# valgrind (`echo --echo-client ADDRESS --connections C --messages M`): C connections opened
# first, then M messages of 64 B in closed loops, then every connection half-closed. The server
# exits by itself once all C connections have ended, and cachegrind writes its total. Every
# count is run twice, with M messages and with none (the same C connections opened and closed),
# and the difference divided by M is the cost per message: start-up, accepting and closing cancel
# out. Only user-space instructions count (cachegrind sees no kernel work); the echo bench's
# server CPU per message covers the system calls. Instruction counts do not move with the load of
# a shared machine the way times do, so they suit small differences.
#
# Under valgrind the tokio-based servers are the slow side, so every epoll wait finds all C
# connections ready, as on a saturated server, and their counts repeat to within 0.1-2%. The mio
# server keeps pace with the client even under valgrind, so its batches vary and its count moves
# by up to about 8% between runs: RUNS=3 prints the median of three (a few instructions either way).
set -euo pipefail
cd "$(dirname "$0")/.."

messages=${MESSAGES:-200000}
connection_counts=${CONNECTIONS:-"50 1000"}
kinds=${KINDS:-"raw api api-static switchboard mio"}
runs=${RUNS:-1}
size=${SIZE:-64}
churn=${CHURN:-0}
if [ "$churn" != 0 ]; then
  connection_counts=churn
fi

command -v valgrind >/dev/null 2>&1 || { echo "instructions.sh: valgrind is not installed" >&2; exit 1; }

echo "== building the echo bench (release)" >&2
exe=$(cargo bench --bench echo --no-run --message-format=json \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[ -x "$exe" ] || { echo "instructions.sh: no bench executable found" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Instructions the server of kind $1 ran for $2 connections and $3 messages, printed on stdout.
count() {
  local kind=$1 connections=$2 count=$3
  local out="$work/cachegrind.out" log="$work/server.log" vlog="$work/valgrind.log"
  # Emptied here, not by the redirection below, which the background process may apply after the
  # first look for the address: the last run's address must not be read.
  rm -f "$out"
  : >"$log"
  # Churned, `count` connections live one after another, and one more in the run with none.
  local served=$connections client_args=(--connections "$connections" --messages "$count" --size "$size")
  if [ "$connections" = churn ]; then
    served=$((count + 1))
    client_args=(--connections "$served" --churn)
  fi
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
    "$exe" --echo-server "$kind" --connections "$served" >"$log" 2>"$vlog" &
  local server=$!
  # This runs in a command substitution, where the script's traps do not: stop the server here.
  fail() {
    echo "instructions.sh: $1" >&2
    kill "$server" 2>/dev/null || true
    return 1
  }
  local address=""
  for _ in $(seq 600); do # valgrind takes a while to start
    address=$(sed -n 's/^listening on //p' "$log")
    [ -n "$address" ] && break
    kill -0 "$server" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$address" ] || { cat "$vlog" >&2; fail "the $kind server did not start"; return 1; }
  timeout 600 "$exe" --echo-client "$address" "${client_args[@]}" 2>"$work/client.log" \
    || { cat "$work/client.log" >&2; fail "the client failed against $kind"; return 1; }
  # The server ends by itself once every connection has ended.
  timeout 120 tail --pid="$server" -f /dev/null \
    || { fail "the $kind server did not exit"; return 1; }
  local status=0
  wait "$server" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "instructions.sh: the $kind server exited with $status" >&2
    cat "$vlog" >&2
    return 1
  fi
  sed -n 's/^summary: //p' "$out"
}

if [ "$churn" != 0 ]; then
  printf '\n%s\n' "User-space instructions per churned connection (server process, cachegrind;"
  printf '%s\n' "$messages connections one after another per run, minus a run with none; $runs run(s) each)"
else
  printf '\n%s\n' "User-space instructions per echoed $size B message (server process, cachegrind;"
  printf '%s\n' "$messages messages per run, minus a run with none; $runs run(s) each)"
fi
printf '%-12s %-12s %14s %10s  %s\n' connections server "instr/msg" "vs raw" "runs"
printf '%s\n' "-------------------------------------------------------------------------------"
for connections in $connection_counts; do
  declare -A median=()
  for kind in $kinds; do
    values=()
    for _ in $(seq "$runs"); do
      base=$(count "$kind" "$connections" 0)
      full=$(count "$kind" "$connections" "$messages")
      values+=("$(awk -v f="$full" -v b="$base" -v m="$messages" 'BEGIN { printf "%.1f", (f - b) / m }')")
    done
    median[$kind]=$(printf '%s\n' "${values[@]}" | sort -g | awk '{ v[NR] = $1 } END {
      if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    spread=""
    if [ "$runs" -gt 1 ]; then
      spread=$(printf '%s\n' "${values[@]}" | sort -g | awk '{ v[NR] = $1 } END {
        printf "  (spread %.1f%%)", 100 * (v[NR] - v[1]) / v[1] }')
    fi
    ratio="-"
    if [ -n "${median[raw]:-}" ]; then
      ratio=$(awk -v a="${median[$kind]}" -v b="${median[raw]}" 'BEGIN { printf "%.2f", a / b }')
    fi
    printf '%-12s %-12s %14s %10s  %s%s\n' "$connections" "$kind" "${median[$kind]}" "$ratio" \
      "${values[*]}" "$spread"
  done
  for kind in $kinds; do
    if [ "$kind" != raw ] && [ -n "${median[raw]:-}" ]; then
      printf 'instructions ratio %s/raw x%s: %s\n' "$kind" "$connections" \
        "$(awk -v a="${median[$kind]}" -v b="${median[raw]}" 'BEGIN { printf "%.2f", a / b }')"
    fi
  done
  if [ -n "${median[switchboard]:-}" ] && [ -n "${median[api]:-}" ]; then
    printf 'instructions ratio switchboard/api x%s: %s\n' "$connections" \
      "$(awk -v a="${median[switchboard]}" -v b="${median[api]}" 'BEGIN { printf "%.2f", a / b }')"
  fi
  unset median
done
