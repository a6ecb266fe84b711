#!/usr/bin/env bash
# Start private PostgreSQL and Redis servers on loopback for the test suite, run the
# command given as arguments against them, and stop them again (whatever the outcome).
# Installs Debian's postgresql, redis-server and chromium when they are missing.
set -euo pipefail

# Fixed high ports; when one is taken (another suite running beside this one), the next free one.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
first_free_port() { local p="$1"; while ! port_free "$p"; do p=$((p + 1)); done; echo "$p"; }
PG_PORT="$(first_free_port "${PICKWISE_TEST_PG_PORT:-55432}")"
REDIS_PORT="$(first_free_port "${PICKWISE_TEST_REDIS_PORT:-56379}")"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${#need[@]}" -gt 0 ]; then
  echo "Installing ${need[*]} from Debian packages..."
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PG_BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)")"

WORK="$(mktemp -d /tmp/pickwise-test.XXXXXX)"
chmod 755 "$WORK"
PGDATA="$WORK/pg"
mkdir -p "$PGDATA" "$WORK/redis" "$WORK/var"

run_pg() {
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$PGDATA"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cleanup() {
  # Never let a cleanup step change the suite's exit status.
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  run_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK" 2>/dev/null || true
}
trap cleanup EXIT

run_pg "$PG_BIN/initdb" -D "$PGDATA" -U pickwise -A trust --no-sync >/dev/null
# Two suites starting at once may both see a port free: when the server cannot bind, take the next one.
for attempt in 1 2 3 4 5; do
  if run_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -w -l "$PGDATA/server.log" start \
    -o "-p $PG_PORT -k $PGDATA -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null; then
    break
  fi
  [ "$attempt" -lt 5 ] || { cat "$PGDATA/server.log" >&2; exit 1; }
  PG_PORT="$(first_free_port "$((PG_PORT + 1))")"
done
run_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U pickwise pickwise

# Ours only when the server on the port answers with our data directory (another suite's may hold the port).
redis_is_ours() { [ "$(redis-cli -p "$REDIS_PORT" config get dir 2>/dev/null | tail -n1)" = "$WORK/redis" ]; }
for attempt in 1 2 3 4 5; do
  # 64 databases: each pytest-xdist worker takes two of its own (tests/parallel.py).
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --databases 64 \
    --dir "$WORK/redis" --pidfile "$WORK/redis/redis.pid" --logfile "$WORK/redis/redis.log"
  for _ in $(seq 50); do redis_is_ours && break; sleep 0.1; done
  redis_is_ours && break
  [ "$attempt" -lt 5 ] || { cat "$WORK/redis/redis.log" >&2; exit 1; }
  REDIS_PORT="$(first_free_port "$((REDIS_PORT + 1))")"
done

export DATABASE_URL="postgres://pickwise@127.0.0.1:$PG_PORT/pickwise"
export CELERY_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
export CELERY_RESULT_BACKEND="redis://127.0.0.1:$REDIS_PORT/1"
export PICKWISE_VAR_DIR="$WORK/var"
export PICKWISE_DEVICE=cpu
echo "PostgreSQL on 127.0.0.1:$PG_PORT, Redis on 127.0.0.1:$REDIS_PORT"

set +e
"$@"
status=$?
set -e
exit "$status"
