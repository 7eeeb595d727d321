#!/usr/bin/env bash
# Insert throughput of the reviews table under four triggers, measured with pgbench:
#   none       no outbox trigger at all
#   outbox     the outbox row (and its outbox_pending entry), no doorbell
#   doorbell   our trigger: the outbox row plus the doorbell's lock (relays awake: never rings)
#   notify     the outbox row plus NOTIFY on every transaction (what we avoid)
# Usage: bench/doorbell.sh [SECONDS] [CLIENTS]   (defaults 15 and 8)
# Uses a scratch database `reviews_bench_doorbell` on the server of DATABASE_URL / DB_*.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/lib/connection.sh"
seconds="${1:-15}"
clients="${2:-8}"
command -v pgbench >/dev/null || die "pgbench is missing (Debian: apt-get install postgresql-contrib or postgresql)"

export DB_NAME=reviews_bench_doorbell
DB_NAME=postgres reviews_psql -c "drop database if exists $DB_NAME" -c "create database $DB_NAME" >/dev/null
DATABASE_URL="" "$root/scripts/migrate" >/dev/null
reviews_psql >/dev/null <<'SQL'
insert into products (id, name, owner_id)
select md5(i::text)::uuid, 'p' || i, 'owner' from generate_series(1, 100) i;

-- The outbox trigger without the doorbell, and with a NOTIFY on every transaction.
create function bench_outbox_only() returns trigger language plpgsql as $$
begin
    with event as (
        insert into outbox (event_type, review_id, product_id, payload)
        values ('review.created', new.id, new.product_id, jsonb_build_object('new', to_jsonb(new), 'old', null))
        returning id)
    insert into outbox_pending (id) select id from event;
    return null;
end $$;
create function bench_outbox_notify() returns trigger language plpgsql as $$
begin
    with event as (
        insert into outbox (event_type, review_id, product_id, payload)
        values ('review.created', new.id, new.product_id, jsonb_build_object('new', to_jsonb(new), 'old', null))
        returning id)
    insert into outbox_pending (id) select id from event;
    perform pg_notify('outbox', '');
    return null;
end $$;
create trigger bench_outbox_only after insert on reviews for each row execute function bench_outbox_only();
create trigger bench_outbox_notify after insert on reviews for each row execute function bench_outbox_notify();
SQL

script="$(mktemp)"
trap 'rm -f "$script"' EXIT
cat >"$script" <<'SQL'
\set p random(1, 100)
\set r random(1, 5)
insert into reviews (product_id, author_id, rating, title, body)
values (md5(:p::text)::uuid, gen_random_uuid()::text, :r, 'bench', 'one review per transaction');
SQL

pgbench_target=()
if [[ -n "${DATABASE_URL:-}" ]]; then
    pgbench_target=("${DATABASE_URL%/*}/$DB_NAME")
else
    pgbench_target=(-h "$DB_HOST" -p "$DB_PORT" -U "$DB_USER" "$DB_NAME")
fi

run() {
    local variant="$1" enable="$2"
    reviews_psql >/dev/null <<SQL
alter table reviews disable trigger _200_write_outbox;
alter table reviews disable trigger bench_outbox_only;
alter table reviews disable trigger bench_outbox_notify;
$( [[ -n "$enable" ]] && echo "alter table reviews enable trigger $enable;" )
begin;
set local session_replication_role = replica;  -- past the trigger refusing TRUNCATE of reviews
truncate reviews, outbox, outbox_pending;
commit;
checkpoint;
SQL
    local tps
    tps="$(PGPASSWORD="${DB_PASSWORD:-}" pgbench -n -c "$clients" -j 2 -T "$seconds" -f "$script" "${pgbench_target[@]}" 2>/dev/null \
        | sed -n 's/^tps = \([0-9.]*\).*/\1/p')"
    printf '%-10s %10.0f tx/s\n' "$variant" "$tps"
    echo "$variant $tps" >>"$results"
}

results="$(mktemp)"
echo "reviews insert throughput, pgbench -c $clients -j 2 -T $seconds, one review per transaction"
run none ""
run outbox bench_outbox_only
run doorbell _200_write_outbox
run notify bench_outbox_notify
awk '{ tps[$1] = $2 } END { printf "doorbell / outbox = %.1f%%\n", 100 * tps["doorbell"] / tps["outbox"] }' "$results"
rm -f "$results"
DB_NAME=postgres reviews_psql -c "drop database $DB_NAME" >/dev/null
