#!/usr/bin/env bash
# Instructions a single-row INSERT costs in the backend: plain table, PL/pgSQL outbox trigger,
# one outbound message on 4 columns. Counted by valgrind's callgrind in a single-user backend
# (no client, no network, no other process), so the figures repeat exactly on a busy machine.
# Each table gets 2,000 and 4,000 inserts, one transaction each; the difference / 2,000 is the
# cost of one insert with start-up and first-use costs taken out. Needs the installed build
# (bench/run.sh or tests/run.sh installs it) and valgrind (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  sudo_cmd=(); [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get install -y -qq valgrind >/dev/null
fi
bindir=$(/usr/lib/postgresql/15/bin/pg_config --bindir)
root=$(mktemp -d /tmp/outbound_msg-instructions-XXXXXX)
as_owner=()
if [ "$(id -u)" = 0 ]; then chown postgres "$root"; as_owner=(runuser -u postgres --); fi
trap 'rm -rf "$root"' EXIT

"${as_owner[@]}" "$bindir/initdb" -A trust -U postgres -D "$root/data" >/dev/null
cat >> "$root/data/postgresql.conf" <<CONF
shared_preload_libraries = 'outbound_msg'
fsync = off
autovacuum = off
listen_addresses = ''
unix_socket_directories = '$root'
CONF
"${as_owner[@]}" "$bindir/pg_ctl" -D "$root/data" -l "$root/log" -w start >/dev/null
psql -h "$root" -U postgres -q -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
CREATE EXTENSION outbound_msg;
CREATE TABLE plain (id int PRIMARY KEY, a int, b text, c timestamptz, d numeric);
CREATE TABLE outboxed (LIKE plain INCLUDING ALL);
CREATE TABLE captured (LIKE plain INCLUDING ALL);
CREATE TABLE outbox (id bigserial PRIMARY KEY, payload jsonb NOT NULL);
CREATE FUNCTION outbox_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (payload) VALUES (jsonb_build_object(
        'id', NEW.id, 'a', NEW.a, 'b', NEW.b, 'c', NEW.c, 'd', NEW.d));
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_capture AFTER INSERT OR UPDATE ON outboxed
    FOR EACH ROW EXECUTE FUNCTION outbox_capture();
SELECT outbound_msg.create_message('captured', 'Bench', 'Bench', 'http://127.0.0.1:9/',
                                   ARRAY['a', 'b', 'c', 'd'], 'postgres');
SQL
"${as_owner[@]}" "$bindir/pg_ctl" -D "$root/data" -w stop >/dev/null

count() {  # table rows -> instructions of a single-user backend running `rows` inserts
  local table=$1 rows=$2 copy="$root/copy-$1-$2"
  cp -a "$root/data" "$copy"
  for ((i = 1; i <= rows; i++)); do
    echo "INSERT INTO $table VALUES ($i, 1, 'text', now(), 1.5);"
  done > "$root/$table-$rows.sql"
  "${as_owner[@]}" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
      "$bindir/postgres" --single -D "$copy" postgres < "$root/$table-$rows.sql" 2>&1 >/dev/null |
    awk '/Collected/ {print $NF}'
  rm -rf "$copy"
}

declare -A per_insert
for table in plain outboxed captured; do
  small=$(count "$table" 2000)
  large=$(count "$table" 4000)
  per_insert[$table]=$(((large - small) / 2000))
done
plain=${per_insert[plain]}
printf '%-40s %8d instructions\n' "(a) plain table" "$plain"
for table in outboxed captured; do
  name="(b) PL/pgSQL outbox trigger"; [ "$table" = captured ] && name="(c) outbound message, 4 columns"
  cost=${per_insert[$table]}
  printf '%-40s %8d instructions   + %d over plain   ratio %s\n' "$name" "$cost" \
    $((cost - plain)) "$(awk -v c="$cost" -v p="$plain" 'BEGIN {printf "%.2f", c / p}')"
done
