-- Dead letters: a job that used up its attempts (or failed permanently) leaves one row here
-- and stops. An operator replays it with replay_dead_job(id): the job becomes pending again
-- with fresh attempts, and the worker is told to look (NOTIFY jobs). Replaying twice is safe:
-- the second call finds the dead letter already replayed and does nothing.

create table dead_jobs (
    id           bigint      generated always as identity,
    job_id       bigint      not null,
    kind         text        not null,
    payload      jsonb       not null,
    attempts     integer     not null,
    last_error   text,
    created_at   timestamptz not null,
    died_at      timestamptz not null default now(),
    replayed_at  timestamptz,
    constraint dead_jobs_pkey primary key (id),
    constraint dead_jobs_job_id_fkey foreign key (job_id) references jobs (id) on delete cascade
);

create unique index dead_jobs_one_open_per_job on dead_jobs (job_id) where replayed_at is null;
create index dead_jobs_kind_died_at on dead_jobs (kind, died_at);

create function replay_dead_job(p_dead_job_id bigint) returns boolean
language plpgsql as $$
declare
    v_job_id bigint;
begin
    update dead_jobs set replayed_at = now()
    where id = p_dead_job_id and replayed_at is null
    returning job_id into v_job_id;
    if not found then
        return false;
    end if;
    update jobs
    set status = 'pending', attempts = 0, run_at = now(), last_error = null, finished_at = null
    where id = v_job_id and status = 'dead';
    perform pg_notify('jobs', '');
    return true;
end;
$$;
