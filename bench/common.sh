# Shared by bench/run.sh, ab.sh, latency.sh and scaling.sh (source it; PSQL must be set).

# wait_committed_offsets "PID..." DB TOPIC N LOG [TIMEOUT_S]: until the
# partitions' committed offsets of TOPIC in DB cover N records; fails (with
# the tail of LOG, which may be a glob) if a PID dies or TIMEOUT_S (0 = none)
# passes. Offsets, not count(*): polling must not load the database.
# Every 0.2 s over one psql session: a psql per poll (a process and a TLS
# connection) took ~7 % of the two cores from the system being measured.
wait_committed_offsets() {
  local pids="$1" db="$2" topic="$3" n="$4" log="$5" timeout="${6:-0}" done=0 line p failed=""
  local deadline=$(( timeout > 0 ? $(date +%s) + timeout : 0 ))
  # Errors (kafka_offsets not made yet) are ignored: each answer ends at "--".
  coproc POLL { exec "${PSQL[@]}" -v ON_ERROR_STOP=0 -d "$db" -tA 2>/dev/null; }
  local poll_pid=$POLL_PID in=${POLL[0]} out=${POLL[1]}
  local q="SELECT coalesce(sum(next_offset), 0) FROM kafka_offsets WHERE topic = '$topic';"
  while [[ -z $failed ]] && (( done < n )); do
    sleep 0.2
    for p in $pids; do
      kill -0 "$p" 2>/dev/null || failed="process $p died"
    done
    if (( deadline > 0 && $(date +%s) >= deadline )); then
      failed="$topic not committed after ${timeout}s"
    fi
    [[ -z $failed ]] || break
    # A psql that ended (e.g. no such database) has closed these: the read says so.
    printf '%s\n\\echo --\n' "$q" 2>/dev/null >&"$out" || true
    while :; do
      { read -r line <&"$in"; } 2>/dev/null || { failed="the psql session to $db ended"; break; }
      [[ $line != -- ]] || break
      if [[ $line =~ ^[0-9]+$ ]]; then done=$line; fi
    done
  done
  kill "$poll_pid" 2>/dev/null || true
  wait "$poll_pid" 2>/dev/null || true
  [[ -n $failed ]] || return 0
  # shellcheck disable=SC2086  # LOG may be a glob
  tail -n 20 $log >&2
  echo "bench: $failed" >&2
  return 1
}

# fresh_db DB: an empty database DB (dropped first if it is there).
fresh_db() {
  "${PSQL[@]}" -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
}

# cpu_seconds PID: user + system CPU seconds of a running process.
cpu_seconds() {
  awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat"
}

# steal_seconds: CPU seconds the hypervisor has given this machine's cores to
# other guests since boot, all cores together (/proc/stat "steal"). Read
# before and after a run: on a shared host the same build has run at half
# the speed on another hour; steal shows the host taking cores away (a
# neighbour slowing shared caches shows only as more CPU seconds a run).
steal_seconds() {
  awk -v t="$(getconf CLK_TCK)" '/^cpu / { print $9 / t }' /proc/stat
}

# postgres_cpu_seconds: user + system CPU seconds the PostgreSQL server has
# used so far: the postmaster, the children it has reaped (backends and
# autovacuum workers that ended) and the ones alive. A backend counts while
# it runs and after it ends, so take the second reading after the system
# under test has disconnected.
postgres_cpu_seconds() {
  local pm
  pm=$("${PSQL[@]}" -d postgres -tA -c "SELECT split_part(pg_read_file('postmaster.pid'), E'\n', 1)")
  { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pm/stat"
    for c in $(pgrep -P "$pm"); do awk '{ print $14 + $15 }' "/proc/$c/stat" 2>/dev/null || true; done
  } | awk -v t="$(getconf CLK_TCK)" '{ s += $1 } END { print s / t }'
}
