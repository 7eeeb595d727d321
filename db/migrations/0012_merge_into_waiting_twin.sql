-- A job of a coalesced kind (recompute_rating) that goes back to "pending, not started" could
-- meet a twin: while it ran, or lay dead, the relay added a new job with the same key (the
-- coalescing index jobs_coalesce allows one unstarted pending job per kind and key, and a
-- started or dead job no longer counts). Handing the job back (a worker shutting down) or
-- replaying its dead letter then broke that unique index, and failed.
--
-- Now such a job is merged into its twin instead: marked done, with a note naming the twin,
-- which does the same work when it runs (a coalesced job reads the source of truth then).
-- A twin that is being inserted by a transaction not yet committed still makes the hand-back
-- or replay fail with the unique violation; the caller's retry then sees the twin.

-- Merges the job (if its status is `p_status`) into a twin waiting unstarted with the same
-- kind and coalesce key: marks it done with a note naming the twin. False when there is no
-- twin (nothing changed).
create function merge_into_waiting_twin(p_job_id bigint, p_status text, p_how text)
returns boolean
language plpgsql as $$
declare
    v_twin bigint;
begin
    select twin.id into v_twin
    from jobs job
    join jobs twin on twin.kind = job.kind and twin.coalesce_key = job.coalesce_key
    where job.id = p_job_id
      and twin.id <> job.id and twin.status = 'pending' and twin.attempts = 0
    limit 1;
    if v_twin is null then
        return false;
    end if;
    update jobs
    set status = 'done', finished_at = now(),
        last_error = format('%s; merged into job %s, which waits with the same coalesce key',
                            p_how, v_twin)
    where id = p_job_id and status = p_status;
    return true;
end;
$$;

-- Gives a started job its attempt back, so that it runs again as if never started (a worker
-- that stops returns the jobs it holds); merges it into a waiting twin if it has one.
create function hand_back_job(p_job_id bigint) returns void
language plpgsql as $$
begin
    -- Still counted as started afterwards: no twin can conflict.
    update jobs set attempts = attempts - 1
    where id = p_job_id and status = 'pending' and attempts > 1;
    if found then
        return;
    end if;
    if not merge_into_waiting_twin(p_job_id, 'pending', 'handed back') then
        update jobs set attempts = 0 where id = p_job_id and status = 'pending';
    end if;
end;
$$;

create or replace function replay_dead_job(p_dead_job_id bigint) returns boolean
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
    if not merge_into_waiting_twin(v_job_id, 'dead', 'replayed') then
        update jobs
        set status = 'pending', attempts = 0, run_at = now(), last_error = null, finished_at = null
        where id = v_job_id and status = 'dead';
        perform pg_notify('jobs', '');
    end if;
    return true;
end;
$$;
