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
-- For scripts and measurements (scripts/outbox-status, the bench); the worker reads payloads
-- itself.
create function notify_job_outbox_ids(p_payload jsonb) returns setof bigint
language sql
stable
as $$
    select id::bigint from jsonb_array_elements_text(p_payload->'outbox_ids') as ids (id)
    union all
    select o.id
    from jsonb_array_elements(p_payload->'events') as e
    join outbox o on o.event_id = (e->>'event_id')::uuid
    union all
    select o.id from outbox o
    where p_payload ? 'event_id' and o.event_id = (p_payload->>'event_id')::uuid
$$;
