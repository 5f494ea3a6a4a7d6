#!/usr/bin/env bash
# Opt-in services for running kg-assets on more than one process or machine: a Redis broker (Celery) and a
# PostgreSQL server (Dagster's run, event and schedule storage), both on loopback only, with all their files
# under DIR. Installs Debian's redis-server and postgresql with apt-get when they are missing (root only).
#
#   scripts/services.sh start DIR [REDIS_PORT] [PG_PORT]   # prints the URLs to use
#   scripts/services.sh stop DIR                            # stops both; leaves no process behind
#
# The PostgreSQL database is `dagster`, user `dagster`, trust authentication on 127.0.0.1 (a test and
# development setup: use a managed PostgreSQL and Redis, or your own, in production).
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"  # runuser and apt-get live there; a minimal PATH (cron, env -i) lacks them

cmd=${1:?usage: services.sh start|stop DIR [REDIS_PORT] [PG_PORT]}
dir=${2:?usage: services.sh start|stop DIR [REDIS_PORT] [PG_PORT]}
redis_port=${3:-6390}
pg_port=${4:-5440}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [[ -n "$bin" && -x "$bin/initdb" ]] && echo "$bin"
}

as_postgres() {  # PostgreSQL refuses to run as root
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_missing() {
    local packages=()
    command -v redis-server >/dev/null || packages+=(redis-server)
    pg_bin >/dev/null || packages+=(postgresql)
    ((${#packages[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "services.sh: missing ${packages[*]} (install them, or run as root to apt-get them)" >&2
        exit 3
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" >&2
}

case $cmd in
start)
    install_missing
    mkdir -p "$dir"
    chmod 755 "$dir"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize yes \
        --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
    bin=$(pg_bin)
    if [[ ! -d "$dir/pg" ]]; then
        install -d -o "$(id -u postgres 2>/dev/null || id -u)" -m 700 "$dir/pg"
        as_postgres "$bin/initdb" -D "$dir/pg" -A trust -U dagster >"$dir/initdb.log"
    fi
    as_postgres "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $dir/pg" start >/dev/null
    as_postgres "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U dagster -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'dagster'" | grep -q 1 ||
        as_postgres "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U dagster dagster
    for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    echo "KG_CELERY_BROKER=redis://127.0.0.1:$redis_port/0"
    echo "KG_DAGSTER_PG_URL=postgresql+psycopg2://dagster@127.0.0.1:$pg_port/dagster"
    ;;
stop)
    if [[ -f "$dir/pg/postmaster.pid" ]]; then
        as_postgres "$(pg_bin)/pg_ctl" -D "$dir/pg" -m fast -w stop >/dev/null || true
    fi
    if [[ -f "$dir/redis.pid" ]]; then
        pid=$(cat "$dir/redis.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$dir/redis.pid"
    fi
    ;;
*)
    echo "usage: services.sh start|stop DIR [REDIS_PORT] [PG_PORT]" >&2
    exit 2
    ;;
esac
