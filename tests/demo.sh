#!/usr/bin/env bash
# The outbound_msg demo: installs what is missing, builds and installs the extension, then runs
# tests/demo.py (a throwaway cluster, a message, some changes, the SOAP the listener received).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
bash .ci/setup
install_args=()
[ "$(id -u)" = 0 ] || install_args=(--sudo)
echo "building and installing outbound_msg (release)..."
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config "${install_args[@]}" >/dev/null
.venv/bin/python tests/demo.py
