#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer on the URLs the tests use: start them when installed but stopped,
# say exactly how to get them when missing. Used by `make test` and `make services`.
set -euo pipefail

PG_HOST=${PG_HOST:-127.0.0.1}; PG_PORT=${PG_PORT:-5432}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}; REDIS_PORT=${REDIS_PORT:-6379}

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
wait_for() { for _ in $(seq 1 50); do listening "$1" "$2" && return 0; sleep 0.2; done; return 1; }

if ! listening "$PG_HOST" "$PG_PORT"; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "PostgreSQL is installed but not running: starting it"
    for version in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start || true
    done
    wait_for "$PG_HOST" "$PG_PORT" || { echo "PostgreSQL did not come up on $PG_HOST:$PG_PORT" >&2; exit 1; }
  elif command -v pg_ctl >/dev/null 2>&1; then
    echo "PostgreSQL is not running on $PG_HOST:$PG_PORT. Start it (e.g. 'pg_ctl -D <datadir> start') and re-run." >&2; exit 1
  else
    cat >&2 <<MSG
PostgreSQL is not installed. The tests need a real server on $PG_HOST:$PG_PORT with a superuser 'postgres'
reachable without a password (trust auth on localhost). On Debian/Ubuntu:
    sudo apt-get install -y postgresql && sudo pg_ctlcluster \$(ls /etc/postgresql) main start
    # trust auth for local TCP: in /etc/postgresql/*/main/pg_hba.conf set 'host all all 127.0.0.1/32 trust'
Or point DATABASE_URL at any PostgreSQL you have: DATABASE_URL=postgres://user:pass@host:5432/arbiter make test
MSG
    exit 1
  fi
fi

if ! listening "$REDIS_HOST" "$REDIS_PORT"; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "Redis is installed but not running: starting it"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
    wait_for "$REDIS_HOST" "$REDIS_PORT" || { echo "Redis did not come up on $REDIS_HOST:$REDIS_PORT" >&2; exit 1; }
  else
    cat >&2 <<MSG
Redis is not installed. The tests need a real server on $REDIS_HOST:$REDIS_PORT. On Debian/Ubuntu:
    sudo apt-get install -y redis-server
Or point REDIS_URL at any Redis you have: REDIS_URL=redis://host:6379/0 make test
MSG
    exit 1
  fi
fi
echo "PostgreSQL ($PG_HOST:$PG_PORT) and Redis ($REDIS_HOST:$REDIS_PORT) are up."
