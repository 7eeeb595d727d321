-- The migration ledger, shared by scripts/migrate (psql) and `reviews-api migrate` (embedded
-- files): one row per applied file with the sha256 of its bytes, so either migrator can run
-- after the other, re-running is a no-op, and an applied file that was edited is refused.
-- Both migrators hold pg_advisory_lock(7265766965770001) while they work, so two started at
-- once run one after the other.
create table if not exists schema_migrations (
    version     text        not null,
    name        text        not null,
    checksum    text        not null,
    applied_at  timestamptz not null default now(),
    applied_by  text        not null,
    constraint schema_migrations_pkey primary key (version)
);
