#!/usr/bin/env bash
# Starts the services the connector tests need, on loopback, touching nothing in /etc:
#   - PostgreSQL (Debian's package; installed if missing) as a throwaway cluster, port 55432;
#   - tansu 0.6.0, a Kafka-protocol broker in Rust with SQLite storage, port 19092 (installed once
#     with `cargo install` into a cache directory that later runs reuse).
# Then writes the environment the tests read to $SERVICES_DIR/env (source it):
#   DATABASE_URL, KAFKA_BROKERS, VITALFLOW_TEST_PG_CTL (a pg_ctl prefix to stop/start Postgres).
#
#   .ci/services.sh start   # start both, print the env file
#   .ci/services.sh stop    # stop both
set -euo pipefail

SERVICES_DIR=${VITALFLOW_SERVICES_DIR:-/tmp/vitalflow-services}
CACHE_DIR=${VITALFLOW_CACHE_DIR:-$HOME/.cache/vitalflow}
PG_PORT=${VITALFLOW_PG_PORT:-55432}
KAFKA_PORT=${VITALFLOW_KAFKA_PORT:-19092}
TANSU_VERSION=0.6.0
TANSU=$CACHE_DIR/tansu/bin/tansu

pg_bin() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    local bin
    bin=$(pg_bin)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        echo "installing PostgreSQL from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
        bin=$(pg_bin)
    fi
    local dir=$SERVICES_DIR/pg
    mkdir -p "$dir"
    chown postgres "$dir" 2>/dev/null || true
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >/dev/null
        cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir'
fsync = off
EOF
    fi
    if ! as_postgres "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/pg.log" -w start >/dev/null
    fi
    echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres" >>"$SERVICES_DIR/env"
    local ctl="$bin/pg_ctl -D $dir/data -l $dir/pg.log -w"
    if [ "$(id -u)" = 0 ]; then ctl="runuser -u postgres -- $ctl"; fi
    echo "export VITALFLOW_TEST_PG_CTL='$ctl'" >>"$SERVICES_DIR/env"
}

start_kafka() {
    if [ ! -x "$TANSU" ]; then
        echo "installing tansu $TANSU_VERSION into $CACHE_DIR/tansu (once; several minutes)"
        cargo install "tansu@$TANSU_VERSION" --locked --features libsql --root "$CACHE_DIR/tansu" --quiet
    fi
    local dir=$SERVICES_DIR/kafka
    mkdir -p "$dir/data"
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
        (cd "$dir" && nohup "$TANSU" broker \
            --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
            --storage-engine sqlite://data/tansu.db >"$dir/tansu.log" 2>&1 &
         echo $! >"$dir/pid")
        for _ in $(seq 1 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then break; fi
            sleep 0.1
        done
        (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null || { cat "$dir/tansu.log"; echo "tansu did not start"; exit 1; }
    fi
    echo "export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT" >>"$SERVICES_DIR/env"
}

case "${1:-start}" in
start)
    mkdir -p "$SERVICES_DIR"
    : >"$SERVICES_DIR/env"
    start_postgres
    start_kafka
    cat "$SERVICES_DIR/env"
    ;;
stop)
    bin=$(pg_bin)
    [ -n "$bin" ] && as_postgres "$bin/pg_ctl" -D "$SERVICES_DIR/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    [ -f "$SERVICES_DIR/kafka/pid" ] && kill "$(cat "$SERVICES_DIR/kafka/pid")" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
