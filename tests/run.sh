#!/usr/bin/env bash
# Runs every test of outbound_msg:
#   1. unit tests and #[pg_test]s (cargo pgrx test, in pgrx's own test cluster);
#   2. end-to-end tests (pytest) against a throwaway preloaded cluster running the release build;
#   3. with PG_MAJORS (for example PG_MAJORS="15 17 18"), the end-to-end tests on those majors too.
# Installs missing prerequisites first (.ci/setup).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
cd "$(dirname "$0")/.."
bash .ci/setup

PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
pgrx_test_args=()
install_args=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: pgrx runs its test cluster as the postgres OS user.
  pgdata=/tmp/outbound_msg-pgrx-test
  install -d -o postgres -g postgres "$pgdata"
  pgrx_test_args=(--runas postgres --pgdata "$pgdata")
else
  install_args=(--sudo)
fi

echo "== unit tests and #[pg_test]s"
cargo pgrx test pg15 "${pgrx_test_args[@]}"

echo "== end-to-end tests"
# cargo pgrx test installed its test build; the end-to-end tests run the release build.
cargo pgrx install --release --pg-config "$PG_CONFIG" "${install_args[@]}" >/dev/null
# cargo pgrx install copies update scripts only: the released 0.1.0 install script, which the
# update test starts from, is installed beside them.
sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" install -m 644 sql/outbound_msg--0.1.0.sql "$("$PG_CONFIG" --sharedir)/extension/"
.venv/bin/pytest -q tests/e2e

# PG_MAJORS="15 17 18": the end-to-end suite also runs against PostgreSQL 17 and 18, each in a
# chroot of the Debian release that packages it (.ci/with-major; needs root), with the library
# built for that major. 15 always runs in full, as above.
for major in ${PG_MAJORS:-15}; do
  [ "$major" = 15 ] && continue
  echo "== end-to-end tests, PostgreSQL $major"
  bash .ci/with-major "$major" .venv/bin/pytest -q tests/e2e
done
