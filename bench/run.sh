#!/usr/bin/env bash
# Runs every benchmark of outbound_msg (bench/bench.py): installs what is missing (nginx from
# Debian's packages, plus what .ci/setup installs), builds and installs the release build, then
# starts its own cluster and listeners. Prints each figure with its baseline, ratio and target.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
bash .ci/setup
sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "bench: installing nginx-light"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq nginx-light >/dev/null
fi
if [ "${PG_MAJOR:-15}" != 15 ]; then
  # PG_MAJOR=17 or 18: the same benchmarks against that major, in its chroot (needs root).
  echo "building and installing outbound_msg (release) for PostgreSQL $PG_MAJOR..."
  exec bash .ci/with-major "$PG_MAJOR" .venv/bin/python bench/bench.py "$@"
fi
install_args=()
[ "$(id -u)" = 0 ] || install_args=(--sudo)
echo "building and installing outbound_msg (release)..."
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config "${install_args[@]}" >/dev/null
.venv/bin/python bench/bench.py "$@"
