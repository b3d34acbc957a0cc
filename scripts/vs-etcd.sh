#!/usr/bin/env bash
# Side by side on this machine: a 3-member etcd (Debian's etcd-server, default
# fsync) and a 3-facility bulwark (release build, defaults plus the settings
# below), one after the other on loopback, both driven over HTTP/1.1
# keep-alive by the same load generator (wrk) against the leader. Every write
# is unique: bulwark `POST /v1/people` with a new Idempotency-Key, etcd
# `PUT /v3/kv/put` of a new key. Reads are linearizable on both: bulwark
# `GET /v1/people/{id}` (linearizable is its default), etcd `POST
# /v3/kv/range` (serializable=false is its default).
#
# Prints one markdown table: writes/s and latency at 1, 16 and 64 clients,
# an overload of 640 clients (goodput against the 64-client rate, p99, RSS),
# linearizable reads at 1 and 64, server CPU per operation (utime+stime of
# the three server processes over the run, from /proc), and kill -9 of the
# leader to the next acknowledged write; the last column is bulwark / etcd.
#
# Usage: scripts/vs-etcd.sh            (DURATION=10 seconds per cell)
#   SKIP_ETCD=1     bulwark only (the etcd column stays empty)
#   HOLD=SECONDS    keep the bulwark cluster up that long before the load
#                   (to look at it by hand)
#   PERF=w64        record a flat perf profile (cpu-clock) of the three
#                   bulwark processes during that cell (w1 w16 w64 r1 r64)
#                   and print its top frames (needs linux-perf)
# Installs etcd-server, etcd-client and wrk with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
BW_EXTRA=${BW_EXTRA:-}
TOKEN=bench-token-0123456789

need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -z "${BIN:-}" ]; then cargo build --release -q; BIN=$PWD/target/release/bulwark; fi

WORK=$(mktemp -d /tmp/vs-etcd.XXXXXX)
PIDS=()
stop() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() { for p in "${PIDS[@]}"; do stop "$p"; done; rm -rf "$WORK"; }
trap cleanup EXIT

# ---- wrk scripts: unique writes, linearizable reads --------------------------
cat >"$WORK/b64.lua" <<'EOF'
local chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
function b64(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return chars:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
EOF
# Each wrk thread numbers its requests; the thread's id and the run's tag
# make every key unique across threads and runs.
common_lua='
local counter = 0
local tid = 0
local nthreads = 0
local threads = {}
function setup(thread) nthreads = nthreads + 1; thread:set("tid", nthreads); table.insert(threads, thread) end
function init(args) tag = args[1] or "r"; codes = {} end
function response(status, headers, body) codes[status] = (codes[status] or 0) + 1 end
function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do all[k] = (all[k] or 0) + v end
  end
  for k, v in pairs(all) do io.write(string.format("status %d: %d\n", k, v)) end
end
'
cat >"$WORK/etcd-put.lua" <<EOF
dofile("$WORK/b64.lua")
$common_lua
function request()
  counter = counter + 1
  local body = '{"key":"' .. b64(tag .. "-" .. tid .. "-" .. counter) .. '","value":"' .. b64("resident pgy2") .. '"}'
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
EOF
cat >"$WORK/etcd-get.lua" <<EOF
dofile("$WORK/b64.lua")
$common_lua
function request()
  return wrk.format("POST", "/v3/kv/range", {["Content-Type"] = "application/json"}, '{"key":"' .. b64("seed") .. '"}')
end
EOF
cat >"$WORK/bw-put.lua" <<EOF
$common_lua
function request()
  counter = counter + 1
  local id = tag .. "-" .. tid .. "-" .. counter
  local body = '{"id":"' .. id .. '","name":"Person ' .. id .. '","role":"resident","pgy":2}'
  return wrk.format("POST", "/v1/people", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer $TOKEN",
    ["Idempotency-Key"] = id,
  }, body)
end
EOF
cat >"$WORK/bw-get.lua" <<EOF
$common_lua
function request()
  return wrk.format("GET", "/v1/people/seed", {["Authorization"] = "Bearer $TOKEN"})
end
EOF

# ---- helpers -----------------------------------------------------------------
cpu_ticks() { # summed utime+stime of the given pids, in clock ticks
  local t=0 p
  for p in "$@"; do
    if [ -r "/proc/$p/stat" ]; then
      t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    fi
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)
declare -A R # results: R[system.metric]

# run_wrk SYSTEM NAME CLIENTS SCRIPT URL PIDS...: records ops/s, p50, p99, cpu/op
run_wrk() {
  local sys=$1 name=$2 clients=$3 script=$4 url=$5; shift 5
  local threads=2; [ "$clients" -lt 2 ] && threads=1
  local before after out
  before=$(cpu_ticks "$@")
  local perf_pid=""
  if [ "$sys" = bulwark ] && [ "${PERF:-}" = "$name" ]; then
    perf record -q -e cpu-clock -F 999 -o "$WORK/perf.data" -p "$(IFS=,; echo "$*")" \
      -- sleep "$DURATION" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  out=$(wrk -t"$threads" -c"$clients" -d"${DURATION}s" --timeout 10s --latency \
    -s "$script" "$url" -- "$sys-$name-$RANDOM" 2>&1)
  after=$(cpu_ticks "$@")
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    echo "perf, bulwark $name, top frames by self time (all three processes):" >&2
    perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null |
      grep -E '^ +[0-9]' | head -40 >&2
  fi
  local rps total p50 p99 errs
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out"); errs=${errs:-0}
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  # goodput: only 2xx answers count
  R[$sys.$name.rps]=$(awk -v r="$rps" -v n="$total" -v e="$errs" 'BEGIN { printf "%.0f", (n > 0 ? r * (n - e) / n : 0) }')
  R[$sys.$name.p50]=$p50
  R[$sys.$name.p99]=$p99
  R[$sys.$name.errs]=$errs
  R[$sys.$name.cpu]=$(awk -v d=$((after - before)) -v n="$total" -v hz="$HZ" \
    'BEGIN { if (n > 0) printf "%.2f", d * 1000 / hz / n; else print "-" }')
  R[$sys.$name.codes]=$(awk '/^status/ {printf "%s%s", sep, $2 $3; sep=" "}' <<<"$out")
  echo "  $sys $name: ${R[$sys.$name.rps]}/s p50 $p50 p99 $p99 cpu/op ${R[$sys.$name.cpu]} ms; answers ${R[$sys.$name.codes]}" >&2
}

# ms_since START_NS
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# ---- etcd --------------------------------------------------------------------
if [ -z "${SKIP_ETCD:-}" ]; then
echo "etcd: 3 members on loopback" >&2
ETCD_CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
declare -A EPID
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --log-level error \
    >"$WORK/etcd-$i.log" 2>&1 &
  EPID[$i]=$!
  PIDS+=("$!")
done
ENDPOINTS=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" endpoint status -w simple 2>/dev/null |
    awk -F', ' '$5 == "true" {print $1}' | head -1
}
for _ in $(seq 1 100); do L=$(etcd_leader); [ -n "$L" ] && break; sleep 0.2; done
[ -n "$L" ] || { echo "etcd elected no leader" >&2; exit 1; }
ETCDCTL_API=3 etcdctl --endpoints="$L" put seed v >/dev/null
EP=(${EPID[1]} ${EPID[2]} ${EPID[3]})
idle_before=$(cpu_ticks "${EP[@]}"); sleep 5; idle_after=$(cpu_ticks "${EP[@]}")
R[etcd.idle]=$(awk -v d=$((idle_after - idle_before)) -v hz="$HZ" 'BEGIN { printf "%.0f", d * 1000 / hz / 5 }')
echo "  etcd idle: ${R[etcd.idle]} ms CPU per second (three processes)" >&2
for c in 1 16 64 640; do run_wrk etcd "w$c" "$c" "$WORK/etcd-put.lua" "$L" "${EP[@]}"; done
for c in 1 64; do run_wrk etcd "r$c" "$c" "$WORK/etcd-get.lua" "$L" "${EP[@]}"; done
R[etcd.rss]=$(for p in "${EP[@]}"; do awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null; done | awk '{if ($1 > m) m = $1} END {printf "%.0f", m / 1024}')
# kill -9 the leader; time to the next acknowledged write at a survivor
LPORT=${L##*:}; LI=${LPORT: -1}
start=$(date +%s%N); stop "${EPID[$LI]}"
survivor=http://127.0.0.1:2379$((LI % 3 + 1))
for _ in $(seq 1 3000); do
  if curl -sf -m 1 -X POST "$survivor/v3/kv/put" -d '{"key":"ZmFpbG92ZXI=","value":"eA=="}' >/dev/null; then break; fi
  sleep 0.005
done
R[etcd.failover]=$(ms_since "$start")
echo "  etcd failover: ${R[etcd.failover]} ms" >&2
for p in "${EP[@]}"; do stop "$p"; done
fi

# ---- bulwark -----------------------------------------------------------------
echo "bulwark: 3 facilities on loopback" >&2
names=(alpha bravo charlie)
declare -A PIN VKEY
for i in 0 1 2; do
  n=${names[$i]}; mkdir -p "$WORK/$n"
  out=$("$BIN" keygen --id "$n" --out "$WORK/$n")
  PIN[$n]=$(awk -F'"' '/^pin/ {print $2}' <<<"$out")
  VKEY[$n]=$(awk -F'"' '/^vote_key/ {print $2}' <<<"$out")
done
for i in 0 1 2; do
  n=${names[$i]}
  {
    printf '[facility]\nid = "%s"\ndata_dir = "data"\nquic_listen = "127.0.0.1:%d"\nhttp_listen = "127.0.0.1:%d"\n' \
      "$n" $((24701 + i)) $((24801 + i))
    printf 'key = "facility.key"\ncert = "facility.crt"\nvote_key = "vote.key"\n\n'
    for j in 0 1 2; do
      [ "$j" = "$i" ] && continue
      m=${names[$j]}
      printf '[[peer]]\nid = "%s"\naddr = "127.0.0.1:%d"\npin = "%s"\nvote_key = "%s"\n\n' \
        "$m" $((24701 + j)) "${PIN[$m]}" "${VKEY[$m]}"
    done
    printf '[api]\ntoken = "%s"\nconcurrency = 256\n\n%b\n' "$TOKEN" "$BW_EXTRA"
  } >"$WORK/$n/facility.toml"
done
declare -A BPID
for i in 0 1 2; do
  n=${names[$i]}
  (cd "$WORK/$n" && RUST_LOG=warn exec "$BIN" node --config facility.toml >"$WORK/$n/node.log" 2>&1) &
  BPID[$n]=$!
  PIDS+=("$!")
done
bw_leader() {
  curl -sf -m 1 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/v1/cluster" |
    sed -n 's/.*"leader":"\([a-z]*\)".*/\1/p'
}
BL=""
for _ in $(seq 1 300); do BL=$(bw_leader 24801 || true); [ -n "$BL" ] && break; sleep 0.2; done
[ -n "$BL" ] || { echo "bulwark elected no leader; logs in $WORK" >&2; trap - EXIT; exit 1; }
for i in 0 1 2; do [ "${names[$i]}" = "$BL" ] && LI=$i; done
BURL=http://127.0.0.1:$((24801 + LI))
for _ in $(seq 1 100); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$BURL/v1/people" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -H 'Idempotency-Key: seed' \
    -d '{"id":"seed","name":"Seed","role":"resident","pgy":2}')
  [ "$code" = 200 ] || [ "$code" = 201 ] && break
  sleep 0.2
done
BP=(${BPID[alpha]} ${BPID[bravo]} ${BPID[charlie]})
if [ -n "${HOLD:-}" ]; then
  echo "holding: leader $BL at $BURL, pids ${BP[*]}, token $TOKEN, scripts in $WORK; Ctrl-C ends" >&2
  sleep "$HOLD"
fi
idle_before=$(cpu_ticks "${BP[@]}"); sleep 5; idle_after=$(cpu_ticks "${BP[@]}")
R[bulwark.idle]=$(awk -v d=$((idle_after - idle_before)) -v hz="$HZ" 'BEGIN { printf "%.0f", d * 1000 / hz / 5 }')
echo "  bulwark idle: ${R[bulwark.idle]} ms CPU per second (three processes)" >&2
for c in 1 16 64 640; do run_wrk bulwark "w$c" "$c" "$WORK/bw-put.lua" "$BURL" "${BP[@]}"; done
R[bulwark.rss]=$(for p in "${BP[@]}"; do awk '/^VmRSS/ {print $2}' "/proc/$p/status"; done | awk '{s += $1; if ($1 > m) m = $1} END {printf "%.0f", m / 1024}')
for c in 1 64; do run_wrk bulwark "r$c" "$c" "$WORK/bw-get.lua" "$BURL" "${BP[@]}"; done
# fsyncs per committed batch, per facility, over the whole run so far
for i in 0 1 2; do
  m=$(curl -sf -m 2 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$((24801 + i))/metrics" || true)
  R[fsync.${names[$i]}]=$(awk '/^bulwark_store_durable_writes_total/ {w += $NF} /^bulwark_raft_applied_batches_total/ {b += $NF}
    END { if (b > 0) printf "%.2f (%d / %d)", w / b, w, b; else print "-" }' <<<"$m")
done
start=$(date +%s%N); stop "${BPID[$BL]}"
SURL=http://127.0.0.1:$((24801 + (LI + 1) % 3))
for k in $(seq 1 3000); do
  code=$(curl -s -o /dev/null -m 1 -w '%{http_code}' -X POST "$SURL/v1/people" \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -H "Idempotency-Key: failover" \
    -d '{"id":"failover","name":"Failover","role":"resident","pgy":2}' || true)
  { [ "$code" = 200 ] || [ "$code" = 201 ]; } && break
  sleep 0.005
done
R[bulwark.failover]=$(ms_since "$start")
echo "  bulwark failover: ${R[bulwark.failover]} ms" >&2

# ---- the table ---------------------------------------------------------------
ms() { # wrk's latency (e.g. 1.54ms, 320.00us, 1.2s) in ms
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.2f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.2f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.2f", v * 1000 }
    else print "-" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }
row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(ratio "$3" "$2")"; }
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, ${DURATION} s per cell, etcd $(etcd --version | awk '/etcd Version/ {print $3}')"
echo
echo "| | etcd | bulwark | bulwark / etcd |"
echo "|---|---|---|---|"
for c in 1 16 64; do
  row "writes/s, $c clients" "${R[etcd.w$c.rps]:--}" "${R[bulwark.w$c.rps]:--}"
  row "write p50 ms, $c clients" "$(ms "${R[etcd.w$c.p50]:--}")" "$(ms "${R[bulwark.w$c.p50]:--}")"
  row "write p99 ms, $c clients" "$(ms "${R[etcd.w$c.p99]:--}")" "$(ms "${R[bulwark.w$c.p99]:--}")"
  row "server CPU ms per write, $c clients" "${R[etcd.w$c.cpu]:--}" "${R[bulwark.w$c.cpu]:--}"
done
row "overload, 640 clients: good writes/s" "${R[etcd.w640.rps]:--}" "${R[bulwark.w640.rps]:--}"
row "overload: good writes / 64-client writes" "$(ratio "${R[etcd.w640.rps]:--}" "${R[etcd.w64.rps]:--}")" "$(ratio "${R[bulwark.w640.rps]:--}" "${R[bulwark.w64.rps]:--}")"
row "overload: p99 ms (all answers)" "$(ms "${R[etcd.w640.p99]:--}")" "$(ms "${R[bulwark.w640.p99]:--}")"
row "largest RSS after the writes, MiB" "${R[etcd.rss]:--}" "${R[bulwark.rss]:--}"
for c in 1 64; do
  row "linearizable reads/s, $c clients" "${R[etcd.r$c.rps]:--}" "${R[bulwark.r$c.rps]:--}"
  row "read p50 ms, $c clients" "$(ms "${R[etcd.r$c.p50]:--}")" "$(ms "${R[bulwark.r$c.p50]:--}")"
  row "server CPU ms per read, $c clients" "${R[etcd.r$c.cpu]:--}" "${R[bulwark.r$c.cpu]:--}"
done
row "idle cluster, CPU ms per second" "${R[etcd.idle]:--}" "${R[bulwark.idle]:--}"
row "kill -9 leader → next write acked, ms" "${R[etcd.failover]:--}" "${R[bulwark.failover]:--}"
echo
echo "bulwark durable writes (fsyncs) per committed batch, whole run: alpha ${R[fsync.alpha]:--}, bravo ${R[fsync.bravo]:--}, charlie ${R[fsync.charlie]:--}"
echo
echo "answers by status (rows count only 2xx): etcd / bulwark"
for k in w1 w16 w64 w640 r1 r64; do
  echo "- $k: ${R[etcd.$k.codes]:--} / ${R[bulwark.$k.codes]:--}"
done
