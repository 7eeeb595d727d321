# shellcheck shell=bash
# Connection settings for the psql-driven scripts: the same variables as the binaries
# (DATABASE_URL, or DB_HOST DB_PORT DB_USER DB_PASSWORD DB_NAME), with the same defaults.
# Source it, then call `reviews_psql [psql args...]`.

DB_HOST="${DB_HOST:-127.0.0.1}"
DB_PORT="${DB_PORT:-5432}"
DB_USER="${DB_USER:-postgres}"
DB_NAME="${DB_NAME:-reviews}"

reviews_psql() {
    local -a target
    local password="${DB_PASSWORD:-${PGPASSWORD:-}}"
    if [[ -n "${DATABASE_URL:-}" ]]; then
        # The URL's password goes to psql in PGPASSWORD, the rest as its argument: a
        # command's arguments are readable by every user in /proc/*/cmdline.
        local url_target url_password
        split_url_password "$DATABASE_URL"
        target=(--dbname="$url_target")
        [[ -n "$url_password" ]] && password="$url_password"
    else
        target=(--host="$DB_HOST" --port="$DB_PORT" --username="$DB_USER" --dbname="$DB_NAME")
    fi
    PGPASSWORD="$password" PGCONNECT_TIMEOUT="${PGCONNECT_TIMEOUT:-5}" PGOPTIONS="-c client_min_messages=warning ${PGOPTIONS:-}" \
        psql --no-psqlrc --quiet --set=ON_ERROR_STOP=1 "${target[@]}" "$@"
}

# Splits a postgres:// URL into the URL without its password (url_target) and the password,
# percent-decoded (url_password, empty when the URL has none). Sets both in the caller's
# scope. A user-info part is what stands before the first '@' when no '/' precedes it.
split_url_password() {
    local url="$1" rest userinfo password
    url_target="$url"
    url_password=""
    [[ "$url" == *://* ]] || return 0
    rest="${url#*://}"
    [[ "$rest" == *@* ]] || return 0
    userinfo="${rest%%@*}"
    [[ "$userinfo" != */* && "$userinfo" == *:* ]] || return 0
    password="${userinfo#*:}"
    url_target="${url%%://*}://${userinfo%%:*}@${rest#*@}"
    # Percent-decoding with printf: backslashes first kept literal, then %XX as \xXX.
    password="${password//\\/\\\\}"
    url_password="$(printf '%b' "${password//%/\\x}")"
}

# Runs one SQL text (the last argument) with psql's other arguments before it. The text goes
# through stdin, where psql interpolates variables (`--set=name=value`, written :'name' in the
# SQL, quoted by psql for the server): values never need pasting into SQL text.
# (`psql --command` sends its text as it is, without interpolating.)
reviews_sql() {
    local sql="${*: -1}"
    reviews_psql "${@:1:$#-1}" <<<"$sql"
}

# Where the scripts think the database is, for messages (never includes a password).
reviews_db_description() {
    if [[ -n "${DATABASE_URL:-}" ]]; then
        echo "DATABASE_URL"
    else
        echo "$DB_USER@$DB_HOST:$DB_PORT/$DB_NAME"
    fi
}

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

require_psql() {
    command -v psql >/dev/null || die "psql is not installed (Debian: apt-get install postgresql-client)"
}

# Fails with a clear message when the database does not answer, with psql's reason (a
# missing database is not a dead server).
require_database() {
    require_psql
    local reason
    if ! reason="$(reviews_psql --tuples-only --command='select 1' 2>&1 >/dev/null)"; then
        reason="$(sed -n 's/^psql: //; s/^error: //; /./{p;q}' <<<"$reason")"
        die "cannot reach the database at $(reviews_db_description): ${reason:-no answer}; check DATABASE_URL or DB_HOST/DB_PORT/DB_USER/DB_NAME"
    fi
}

# Converts a duration like 500ms, 2s, 5m, 1h, 7d to milliseconds; fails on anything else.
duration_ms() {
    local value="$1" number unit
    if [[ ! "$value" =~ ^([0-9]+)(ms|s|m|h|d)$ ]]; then
        return 1
    fi
    number="${BASH_REMATCH[1]}"
    unit="${BASH_REMATCH[2]}"
    case "$unit" in
        ms) echo "$number" ;;
        s) echo $((number * 1000)) ;;
        m) echo $((number * 60000)) ;;
        h) echo $((number * 3600000)) ;;
        d) echo $((number * 86400000)) ;;
    esac
}

# Fails unless $1 is a positive whole number; $2 names it in the message.
require_id() {
    [[ "$1" =~ ^[0-9]+$ ]] || die "$2 must be a positive whole number, got '$1'"
}
