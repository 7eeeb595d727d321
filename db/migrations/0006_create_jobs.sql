-- Jobs: what the worker must do because of outbox events. Postgres is the source of truth:
-- a job is pending until it succeeds (done) or uses up its attempts (dead). Redis only carries
-- job ids to runners; whatever Redis forgets, the worker re-enqueues from this table.
--
-- attempts is incremented *before* a job runs, so a job that crashes its worker still
-- reaches its dead letter. run_at is when the job may next run (retries push it forward).
-- coalesce_key merges bursts: while a job of the same kind and key is pending and not yet
-- started, a new one is not added (a rating recompute reads the source of truth anyway).

create table jobs (
    id              bigint      generated always as identity,
    kind            text        not null,
    event_id        uuid,
    coalesce_key    text,
    payload         jsonb       not null default '{}',
    status          text        not null default 'pending',
    attempts        integer     not null default 0,
    last_error      text,
    run_at          timestamptz not null default now(),
    created_at      timestamptz not null default now(),
    last_started_at timestamptz,
    finished_at     timestamptz,
    constraint jobs_pkey primary key (id),
    constraint jobs_status_known check (status in ('pending', 'done', 'dead')),
    constraint jobs_attempts_non_negative check (attempts >= 0)
);

create unique index jobs_coalesce on jobs (kind, coalesce_key)
    where status = 'pending' and attempts = 0 and coalesce_key is not null;
-- Serves reconciliation (pending jobs that are due) and the ops scripts.
create index jobs_pending_run_at on jobs (run_at) where status = 'pending';
create index jobs_event on jobs (event_id);

-- Retry schedules, one row per job kind. The delay before attempt n+1 is
-- min(max_delay_ms, base_delay_ms * multiplier^(n-1)), shortened at random by up to
-- `jitter` of itself. Workers reload this table when it changes (the trigger below rings).
create table retry_policies (
    kind           text             not null,
    max_attempts   integer          not null,
    base_delay_ms  bigint           not null,
    multiplier     double precision not null,
    max_delay_ms   bigint           not null,
    jitter         double precision not null,
    updated_at     timestamptz      not null default now(),
    constraint retry_policies_pkey primary key (kind),
    constraint retry_policies_max_attempts_range check (max_attempts between 1 and 1000),
    constraint retry_policies_base_positive check (base_delay_ms > 0),
    constraint retry_policies_multiplier_range check (multiplier >= 1),
    constraint retry_policies_max_not_below_base check (max_delay_ms >= base_delay_ms),
    constraint retry_policies_jitter_range check (jitter >= 0 and jitter <= 1)
);

insert into retry_policies (kind, max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter)
values ('recompute_rating', 10, 1000, 2, 300000, 0.2),
       ('notify_owner', 10, 1000, 2, 300000, 0.2);

create function tg_retry_policies__announce_change() returns trigger
language plpgsql as $$
begin
    perform pg_notify('retry_policies', '');
    return null;
end;
$$;

create trigger _100_announce_change
    after insert or update or delete on retry_policies
    for each statement execute function tg_retry_policies__announce_change();
