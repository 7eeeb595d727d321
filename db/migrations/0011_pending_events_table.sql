-- Pending events get a table of their own; the outbox becomes write-once history.
--
-- Until now the relay marked each claimed event relayed (`relayed_at = now()`). That column is
-- named by the partial index of pending events, so the update could never be HOT: it wrote a
-- second copy of the row and an entry into each of the outbox's five indexes, three of them on
-- random UUIDs whose size grows with the history. With a million relayed rows kept, those
-- writes missed the cache and claiming 500 events took 34 ms instead of 20
-- (docs/PERFORMANCE.md).
--
-- Now the trigger writes the event into `outbox` and its id into `outbox_pending`, in the same
-- statement. The relay claims ids from `outbox_pending` (FOR UPDATE SKIP LOCKED, in id order)
-- and deletes them in the claiming statement; the outbox row itself is never written again. A
-- relayed event is one that is in `outbox` and not in `outbox_pending`; when it was relayed
-- is when its jobs were created (`jobs.created_at`, the relay's transaction time).
--
-- No foreign key from outbox_pending to outbox: checking it would lock the outbox row
-- (FOR KEY SHARE) at every insert, which is a write of that row. Only the trigger and
-- scripts/replay-events add ids, both taken from outbox; scripts/purge never deletes an event
-- that is still pending.

drop index outbox_pending;

create table outbox_pending (
    id  bigint  not null,
    constraint outbox_pending_pkey primary key (id)
);

insert into outbox_pending (id) select id from outbox where relayed_at is null;

alter table outbox drop column relayed_at;

create or replace function tg_reviews__write_outbox() returns trigger
language plpgsql as $$
declare
    v_type text;
    v_row reviews;
begin
    if tg_op = 'INSERT' then
        v_type := 'review.created';
        v_row := new;
    elsif tg_op = 'UPDATE' then
        v_type := 'review.updated';
        v_row := new;
    else
        v_type := 'review.deleted';
        v_row := old;
    end if;

    -- One statement for both rows: each statement a PL/pgSQL function runs has its own
    -- executor start-up cost, paid on every write.
    with event as (
        insert into outbox (event_type, review_id, product_id, payload, actor_id, request_id)
        values (
            v_type,
            v_row.id,
            v_row.product_id,
            jsonb_build_object(
                'new', case when tg_op = 'DELETE' then null else to_jsonb(new) end,
                'old', case when tg_op = 'INSERT' then null else to_jsonb(old) end
            ),
            nullif(current_setting('app.user_id', true), ''),
            nullif(current_setting('app.request_id', true), '')
        )
        returning id
    )
    insert into outbox_pending (id) select id from event;

    -- Ring only when a worker may be asleep (see 0005_create_outbox.sql). Each statement below
    -- takes a fresh snapshot, so the flag is read after the shared lock is held.
    perform pg_advisory_xact_lock_shared(7265766965770010);
    if (select armed from outbox_doorbell) then
        update outbox_doorbell set armed = false where armed;
        if found then
            perform pg_notify('outbox', '');
        end if;
    end if;
    return null;
end;
$$;
