-- A dead job replayed while a relay inserts a twin for it (a held-back rating job of the same
-- product, not committed yet) found no twin to merge into, then waited on the coalescing
-- index for that insert and failed with a duplicate key (23505) once it committed: the
-- operator saw an error and had to replay again. Like hand_back_job (0017), it now merges
-- into the twin once the twin has committed. The update runs in a subtransaction (a replay
-- that finds no twin at first pays for one; replays are an operator's, one at a time).
create or replace function replay_dead_job(p_dead_job_id bigint) returns boolean
language plpgsql security definer
set search_path = public, pg_temp
as $$
declare
    v_job_id bigint;
begin
    update dead_jobs set replayed_at = now()
    where id = p_dead_job_id and replayed_at is null
    returning job_id into v_job_id;
    if not found then
        return false;
    end if;
    if merge_into_waiting_twin(v_job_id, 'dead', 'replayed') then
        return true;
    end if;
    begin
        -- A rating job replayed from its dead letter recomputes: whether its deltas were
        -- applied is what a dead letter leaves in doubt.
        update jobs
        set status = 'pending', attempts = 0, run_at = now(), last_error = null, finished_at = null,
            payload = case when kind = 'recompute_rating'
                           then payload || '{"recompute": true}' else payload end
        where id = v_job_id and status = 'dead';
    exception when unique_violation then
        if merge_into_waiting_twin(v_job_id, 'dead', 'replayed') then
            return true;
        end if;
        raise;
    end;
    perform pg_notify('jobs', '');
    return true;
end;
$$;
