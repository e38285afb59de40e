# Source me from bash: `. scripts/env.sh`. Environment for building and
# running riskstream against the local stack from scripts/stack.

RISKSTREAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RISKSTREAM_ROOT

# ort is built with "load-dynamic": the ONNX Runtime library comes from the
# onnxruntime wheel in .venv (scripts/setup.sh), not from a system package.
# Empty if setup has not run yet.
ORT_DYLIB_PATH="$(ls -1 "$RISKSTREAM_ROOT"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)"
export ORT_DYLIB_PATH

# Outside the repo so fresh clones / worktrees share one build cache. Cargo
# tells a stale crate by modification times, and the clones share its
# fingerprints: after building another checkout, `touch src/lib.rs` in this
# one before building it, or edits older than that build are not compiled.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/riskstream/target}"

export KAFKA_BROKERS=127.0.0.1:19092
export DATABASE_URL=postgres://postgres@127.0.0.1:15432/riskstream

# The secured side of the local stack (scripts/stack): Kafka's SASL_SSL
# listener with a SCRAM-SHA-512 user, and the local CA that signed the
# certificate of that listener and of PostgreSQL (sslmode=verify-full).
# Dev-only credentials; keep in step with scripts/stack.
export KAFKA_SASL_BROKERS=127.0.0.1:19094
export KAFKA_SASL_USERNAME=riskstream
export KAFKA_SASL_PASSWORD=riskstream-dev-only
export RISKSTREAM_TLS_CA="$RISKSTREAM_ROOT/.stack/tls/ca.pem"
