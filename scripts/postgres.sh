# Sourced by scripts/test: start a throw-away PostgreSQL server (Debian's
# package) on loopback and export BRIDGEPROXY_TEST_POSTGRES for the tests.
# Installs the package when it is missing and we are root.

pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

start_postgres() {
    local bindir port datadir runas
    bindir=$(pg_bindir)
    if [ -z "$bindir" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "== installing PostgreSQL (Debian package)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
            bindir=$(pg_bindir)
        fi
    fi
    if [ -z "$bindir" ]; then
        echo "!! PostgreSQL is not installed and cannot be: PostgreSQL tests will be SKIPPED" >&2
        return 0
    fi
    port=${BRIDGEPROXY_PG_PORT:-54329}
    datadir=$(mktemp -d /tmp/bridgeproxy-pg.XXXXXX)
    runas=()
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown postgres "$datadir"
        runas=(runuser -u postgres --)
    fi
    "${runas[@]}" "$bindir/initdb" -D "$datadir" -U bridge --auth=trust -E UTF8 >/dev/null
    "${runas[@]}" "$bindir/pg_ctl" -D "$datadir" -l "$datadir/server.log" -w -t 60 \
        -o "-p $port -k $datadir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    "${runas[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U bridge bridge
    export BRIDGEPROXY_TEST_POSTGRES="postgresql://bridge@127.0.0.1:$port/bridge"
    export BRIDGEPROXY_PG_BINDIR="$bindir" BRIDGEPROXY_PG_DATADIR="$datadir"
    PG_STOP=("${runas[@]}" "$bindir/pg_ctl" -D "$datadir" -m fast stop)
    echo "== PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

stop_postgres() {
    if [ -n "${PG_STOP+x}" ]; then
        "${PG_STOP[@]}" >/dev/null 2>&1 || true
        rm -rf "$BRIDGEPROXY_PG_DATADIR"
    fi
}
