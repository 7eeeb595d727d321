-- A notify_owner job names its relay batch's events by their outbox ids
-- ({"outbox_ids": [..]}) instead of carrying each event whole ({"events": [{..}]}): the
-- handler reads the events from the outbox, which keeps them. Building a JSON object per event
-- took about as long as the rest of the relay statement (9-10 ms of a 500-event batch on this
-- machine, docs/PERFORMANCE.md run K), and the job's row, written three times, carried
-- ~125 kB.
-- Jobs written before (and by workers started with RELAY_NOTIFY_PAYLOAD=events, for workers
-- from before this migration still running beside them) carry their events whole, or one
-- event at the top; every reader accepts all three forms.

-- The outbox ids of the events a notify_owner job covers, whichever form its payload has.
-- For scripts and measurements (scripts/outbox-status, scripts/purge, the bench); the worker
-- reads payloads itself. A payload no worker could read (a dead letter's, say) names no
-- event instead of failing the script that reads it: only well-formed ids are cast.
create function notify_job_outbox_ids(p_payload jsonb) returns setof bigint
language sql
stable
rows 500
as $$
    select (id #>> '{}')::bigint
    from jsonb_array_elements(case jsonb_typeof(p_payload->'outbox_ids')
                                  when 'array' then p_payload->'outbox_ids'
                                  else '[]' end) as ids (id)
    where jsonb_typeof(id) = 'number' and (id #>> '{}') ~ '^[0-9]{1,18}$'
    union all
    select o.id
    from jsonb_array_elements(case jsonb_typeof(p_payload->'events')
                                  when 'array' then p_payload->'events'
                                  else '[]' end) as e
    join outbox o on o.event_id = case when jsonb_typeof(e) = 'object'
                                            and e->>'event_id' ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
                                       then (e->>'event_id')::uuid end
    union all
    select o.id from outbox o
    where o.event_id = case when p_payload->>'event_id' ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
                            then (p_payload->>'event_id')::uuid end
$$;
