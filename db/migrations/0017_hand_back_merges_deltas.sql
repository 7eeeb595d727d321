-- A rating job handed back into its waiting twin (a worker shutting down, a deferral, the
-- relay giving back a job it could not hand over) has not applied its deltas: its effects
-- commit only with its completion, and the hand-back holds the job's row at the attempt it
-- gives back, so no completion can commit after it. The twin adds them to its own
-- (merge_job_payloads, as the relay does when newer events join a waiting job) instead of
-- recomputing: a recompute counts every review of the product and every event still on its
-- way (all of a backlog's), where a delta updates one row, and one merged-into job used to
-- turn every later job of its product into a recompute too.
-- The twin's row is now locked first: a start statement that read its payload before the
-- merge would run without the deltas merged into it.
-- A replayed dead letter still makes the twin recompute: a letter written by an older worker
-- may have applied its effects before it died.
create or replace function merge_into_waiting_twin(p_job_id bigint, p_status text, p_how text)
returns boolean
language plpgsql
set search_path = public, pg_temp
as $$
declare
    v_twin bigint;
    v_payload jsonb;
begin
    select twin.id, job.payload into v_twin, v_payload
    from jobs job
    join jobs twin on twin.kind = job.kind and twin.coalesce_key = job.coalesce_key
    where job.id = p_job_id
      and twin.id <> job.id and twin.status = 'pending' and twin.attempts = 0
    limit 1
    -- Held until commit: a twin started meanwhile (its payload read by its runner) is no
    -- longer waiting, and the check above is made again on its newest version.
    for update of twin;
    if v_twin is null then
        return false;
    end if;
    update jobs
    set status = 'done', finished_at = now(),
        last_error = format('%s; merged into job %s, which waits with the same coalesce key',
                            p_how, v_twin)
    where id = p_job_id and status = p_status;
    if p_how = 'handed back' then
        update jobs set payload = merge_job_payloads(kind, v_payload, payload)
        where id = v_twin and kind = 'recompute_rating';
    else
        update jobs set payload = payload || '{"recompute": true}'
        where id = v_twin and kind = 'recompute_rating';
    end if;
    return true;
end;
$$;

-- A twin can also appear while the hand-back runs: a relay's insert of one, not committed
-- when the twin was looked for, makes giving the attempt back wait on the coalescing index
-- and then fail as a duplicate once it commits (a hand-back of several jobs failed whole,
-- and each ran later at a spent attempt). The twin is committed by then: merge into it.
create or replace function hand_back_job(p_job_id bigint, p_attempt integer) returns boolean
language plpgsql
set search_path = public, pg_temp
as $$
begin
    perform 1 from jobs
    where id = p_job_id and status = 'pending' and attempts = p_attempt
    for update;
    if not found then
        return false;
    end if;
    if p_attempt > 1 then
        -- Still counted as started afterwards: no twin can conflict.
        update jobs set attempts = attempts - 1 where id = p_job_id;
    elsif not merge_into_waiting_twin(p_job_id, 'pending', 'handed back') then
        begin
            update jobs set attempts = 0 where id = p_job_id;
        exception when unique_violation then
            if not merge_into_waiting_twin(p_job_id, 'pending', 'handed back') then
                raise;
            end if;
        end;
    end if;
    return true;
end;
$$;
