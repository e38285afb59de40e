# Shared by bench/ab.sh and bench/latency.sh (source it; PSQL must be set).

# wait_committed_offsets PID DB TOPIC N LOG: until the partitions' committed
# offsets of TOPIC in DB cover N records; exits (with LOG's tail) if PID dies.
# Offsets, not count(*): polling must not load the database.
wait_committed_offsets() {
  local pid="$1" db="$2" topic="$3" n="$4" log="$5" done=0
  while (( done < n )); do
    sleep 0.2
    kill -0 "$pid" || { tail "$log" >&2; exit 1; }
    done=$("${PSQL[@]}" -d "$db" -tA -c "SELECT coalesce(sum(next_offset), 0) FROM kafka_offsets
                                         WHERE topic = '$topic'" 2>/dev/null || echo 0)
  done
}

# cpu_seconds PID: user + system CPU seconds of a running process.
cpu_seconds() {
  awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat"
}
