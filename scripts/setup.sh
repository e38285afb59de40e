#!/usr/bin/env bash
# Machine setup for riskstream: system packages, a Kafka broker from Maven
# Central, and the Python venv that provides libonnxruntime.so.
#
# Idempotent and cheap to re-run (make test/demo call it every time): each step
# checks first and only does work when something is missing or its inputs
# (pom.xml, requirements file) changed. Prints one line per thing installed.
#
# Env knobs:
#   RISKSTREAM_PYTHON   interpreter used to create .venv (default: python3)
#   RISKSTREAM_SKIP_APT=1  skip the system package step (e.g. not root, already provisioned)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Run a noisy command quietly; show its output only if it fails.
quiet() {
  local log
  log="$(mktemp)"
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    die "failed: $*"
  fi
  rm -f "$log"
}

sha() { sha256sum "$@" | sha256sum | cut -c1-16; }

# --- 1. System packages -------------------------------------------------------
# Build deps of rdkafka's bundled librdkafka (cmake build with ssl, zlib, curl),
# PostgreSQL (server + client), Java/Maven for the Kafka broker, and
# Chromium + chromedriver for the console's browser test.
apt_step() {
  local want=(libssl-dev zlib1g-dev pkg-config gcc g++ make perl cmake libcurl4-openssl-dev)
  local missing=() p

  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  # Any server >= 15 will do; the distro default is 15 on Debian 12.
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql postgresql-client)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  command -v mvn  >/dev/null || missing+=(maven)
  # The console's browser test (integration-tests/console.rs) drives Debian's
  # Chromium through chromedriver.
  command -v chromium     >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)

  ((${#missing[@]})) || return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  [[ $EUID -eq 0 ]] || die "missing system packages (${missing[*]}); run as root or install them"

  # The Debian package would otherwise create and start a "main" cluster on
  # :5432 that nothing uses; scripts/stack runs its own private cluster.
  if [[ " ${missing[*]} " == *" postgresql "* ]]; then
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/riskstream.conf
  fi

  export DEBIAN_FRONTEND=noninteractive
  quiet apt-get update -q
  quiet apt-get install -y -q --no-install-recommends "${missing[@]}"
  for p in "${missing[@]}"; do say "installed $p (apt)"; done
}

# --- 2. Kafka broker jars -----------------------------------------------------
# Resolved with Maven because only package registries are reachable (no
# downloads.apache.org). A stamp holding the pom's hash makes re-runs free and
# re-resolves when the pom changes.
kafka_step() {
  local libs="$ROOT/.stack/kafka/libs" pom="$ROOT/scripts/kafka/pom.xml"
  local stamp="$libs/.pom.sha" want
  want="$(sha "$pom")"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0

  rm -rf "$libs"
  mkdir -p "$libs"
  # -B: no progress bars/colour prompts in CI logs.
  quiet mvn -B -q -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime
  compgen -G "$libs/kafka_2.13-*.jar" >/dev/null || die "kafka jars not found in $libs after mvn"
  echo "$want" >"$stamp"
  say "installed $(basename "$libs"/kafka_2.13-*.jar .jar) ($(ls "$libs"/*.jar | wc -l) jars in .stack/kafka/libs)"
}

# --- 3. Python venv -----------------------------------------------------------
venv_step() {
  local venv="$ROOT/.venv" req="$ROOT/scripts/requirements-runtime.txt"
  local stamp="$venv/.requirements.sha" want py="${RISKSTREAM_PYTHON:-python3}"
  want="$(sha "$req")"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
     && compgen -G "$venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*" >/dev/null; then
    return 0
  fi

  if [[ ! -x "$venv/bin/python" ]]; then
    # Debian's system python3 ships venv/ensurepip separately.
    if ! "$py" -m venv --help >/dev/null 2>&1 || ! "$py" -c 'import ensurepip' 2>/dev/null; then
      [[ $EUID -eq 0 ]] || die "$py has no venv/ensurepip; install python3-venv"
      export DEBIAN_FRONTEND=noninteractive
      quiet apt-get update -q
      quiet apt-get install -y -q --no-install-recommends python3-venv
      say "installed python3-venv (apt)"
    fi
    rm -rf "$venv"
    quiet "$py" -m venv "$venv"
  fi
  quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  compgen -G "$venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*" >/dev/null \
    || die "libonnxruntime.so not found in .venv after pip install"
  echo "$want" >"$stamp"
  say "installed .venv ($("$venv/bin/python" -V 2>&1); $(grep -v '^#' "$req" | grep -v '^$' | tr '\n' ' '))"
}

[[ "${RISKSTREAM_SKIP_APT:-0}" == 1 ]] || apt_step
kafka_step
venv_step
