# shellcheck shell=bash
# Finds or starts the Postgres and Redis that scripts/test and scripts/dev need.
#
# A server that answers at DATABASE_URL / REDIS_URL (or DB_HOST:DB_PORT, REDIS_HOST:REDIS_PORT,
# defaulting to 127.0.0.1:5432 and 127.0.0.1:6379) is used as it is. Otherwise a private one is
# started from the system's binaries under .dev/ (git-ignored) on its own port, and the
# variables are exported to point at it. Source after setting $root.

dev_dir="${DEV_DIR:-$root/.dev}"
private_pg_port="${PRIVATE_PG_PORT:-54329}"
private_redis_port="${PRIVATE_REDIS_PORT:-56379}"

say() { echo "==> $*" >&2; }

# Makes sure commands are there: `need_packages WHY command:package ...` (a command may be a
# path). What is missing is installed by `install_packages`.
need_packages() {
    local why="$1" pair command package missing=()
    shift
    for pair in "$@"; do
        command="${pair%%:*}" package="${pair#*:}"
        if ! command -v "$command" >/dev/null 2>&1 && [[ ! -x "$command" ]]; then
            [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] || install_packages "$why" "${missing[@]}"
}

# `install_packages WHY package ...`: from Debian's packages when this is Debian and we are
# root; otherwise the script stops and says exactly what to install.
install_packages() {
    local why="$1"
    shift
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        say "installing $* (Debian packages) for $why"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "$why needs $*: install them (Debian: apt-get install $*)" >&2
        exit 1
    fi
}

postgres_answers() {
    if [[ -n "${DATABASE_URL:-}" ]]; then
        pg_isready --quiet --dbname="$DATABASE_URL" --timeout=3
    else
        pg_isready --quiet --host="${DB_HOST:-127.0.0.1}" --port="${DB_PORT:-5432}" --timeout=3
    fi
}

find_pg_bin() {
    local name="$1"
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [[ -n "$dir" && -x "$dir/$name" ]] && echo "$dir/$name"
}

# Runs a command as the unprivileged owner of the private cluster (Postgres refuses root).
as_pg_owner() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_private_postgres() {
    local initdb pg_ctl data="$dev_dir/postgres"
    initdb="$(find_pg_bin initdb)"
    pg_ctl="$(find_pg_bin pg_ctl)"
    if [[ -z "$initdb" || -z "$pg_ctl" ]]; then
        install_packages "a private Postgres (none answers; or set DATABASE_URL)" postgresql
        initdb="$(find_pg_bin initdb)"
        pg_ctl="$(find_pg_bin pg_ctl)"
    fi
    if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
        echo "Running as root, but there is no 'postgres' user to own a private cluster; create one (useradd postgres) or run as another user." >&2
        exit 1
    fi
    mkdir -p "$dev_dir"
    if [[ ! -f "$data/PG_VERSION" ]]; then
        say "initialising a private Postgres in $data"
        mkdir -p "$data"
        [[ "$(id -u)" == 0 ]] && chown postgres "$data"
        as_pg_owner "$initdb" --pgdata="$data" --username=postgres --auth=trust >/dev/null
    fi
    if [[ ! -f "$data/server.crt" ]]; then
        # TLS as on a managed server: a self-signed certificate for localhost, which is its
        # own CA (the TLS tests start a Postgres of their own with a certificate they make).
        need_packages "the private Postgres's certificate" openssl:openssl
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$data/server.key" -out "$data/server.crt" >/dev/null 2>&1
        chmod 600 "$data/server.key"
    fi
    [[ "$(id -u)" == 0 ]] && chown -R postgres "$data"
    if ! pg_isready --quiet --host=127.0.0.1 --port="$private_pg_port"; then
        say "starting the private Postgres on 127.0.0.1:$private_pg_port"
        as_pg_owner "$pg_ctl" --pgdata="$data" --log="$data/server.log" --wait \
            -o "-p $private_pg_port -k $data -c listen_addresses=127.0.0.1 -c ssl=on" start >/dev/null
    fi
    export DATABASE_URL="postgres://postgres@127.0.0.1:$private_pg_port/${DB_NAME:-reviews}"
}

ensure_postgres() {
    need_packages "reaching Postgres" pg_isready:postgresql-client psql:postgresql-client
    if postgres_answers; then
        return
    fi
    say "Postgres does not answer at ${DATABASE_URL:+DATABASE_URL}${DATABASE_URL:-${DB_HOST:-127.0.0.1}:${DB_PORT:-5432}}"
    start_private_postgres
}

redis_answers() {
    command -v redis-cli >/dev/null || return 1
    if [[ -n "${REDIS_URL:-}" ]]; then
        [[ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" == PONG ]]
    else
        [[ "$(REDISCLI_AUTH="${REDIS_PASSWORD:-}" redis-cli -h "${REDIS_HOST:-127.0.0.1}" -p "${REDIS_PORT:-6379}" ping 2>/dev/null)" == PONG ]]
    fi
}

ensure_redis() {
    if redis_answers; then
        return
    fi
    need_packages "a private Redis (none answers; or set REDIS_URL)" redis-server:redis-server redis-cli:redis-server
    mkdir -p "$dev_dir/redis"
    say "starting a private Redis on 127.0.0.1:$private_redis_port"
    redis-server --bind 127.0.0.1 --port "$private_redis_port" --daemonize yes --save "" \
        --appendonly no --dir "$dev_dir/redis" --pidfile "$dev_dir/redis/redis.pid" \
        --logfile "$dev_dir/redis/redis.log" >/dev/null
    for _ in $(seq 50); do
        [[ "$(redis-cli -p "$private_redis_port" ping 2>/dev/null)" == PONG ]] && break
        sleep 0.1
    done
    export REDIS_URL="redis://127.0.0.1:$private_redis_port"
}

# Stops the private servers, if this checkout started any.
stop_private_services() {
    local pg_ctl
    if [[ -f "$dev_dir/postgres/postmaster.pid" ]]; then
        pg_ctl="$(find_pg_bin pg_ctl)"
        say "stopping the private Postgres"
        as_pg_owner "$pg_ctl" --pgdata="$dev_dir/postgres" --mode=fast stop >/dev/null || true
    fi
    if [[ -f "$dev_dir/redis/redis.pid" ]]; then
        say "stopping the private Redis"
        redis-cli -p "$private_redis_port" shutdown nosave >/dev/null 2>&1 || true
        rm -f "$dev_dir/redis/redis.pid"
    fi
}
