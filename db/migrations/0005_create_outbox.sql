-- The outbox: every committed change to `reviews` leaves one row here, written by a trigger in
-- the same transaction (so a rolled-back change leaves none, and writes from psql are captured
-- like the API's). The worker claims pending rows (relayed_at is null) with FOR UPDATE SKIP
-- LOCKED over a partial index, never by a high-water-mark id: identity values commit out of
-- order.
--
-- The doorbell. NOTIFY takes a database-wide lock at commit, so ringing on every write caps
-- insert throughput. Instead a worker that runs out of work *arms* the bell (outbox_doorbell),
-- and the first writer after that disarms it and rings once. No wake-up is lost: writers hold
-- a shared advisory lock (7265766965770010) while they read the flag, and a worker arms under
-- the exclusive lock, so arming waits for every writer that might have read "disarmed"; the
-- worker then looks once more before it sleeps and sees their rows.

create table outbox (
    id              bigint      generated always as identity,
    event_id        uuid        not null default gen_random_uuid(),
    event_type      text        not null,
    review_id       uuid        not null,
    product_id      uuid        not null,
    -- {"new": row or null, "old": row or null}
    payload         jsonb       not null,
    actor_id        text,
    request_id      text,
    schema_version  smallint    not null default 1,
    occurred_at     timestamptz not null default now(),
    relayed_at      timestamptz,
    constraint outbox_pkey primary key (id),
    constraint outbox_event_id_key unique (event_id),
    constraint outbox_event_type_known
        check (event_type in ('review.created', 'review.updated', 'review.deleted'))
);

-- Only pending rows are indexed, so claiming stays fast however many finished rows remain.
create index outbox_pending on outbox (id) where relayed_at is null;
create index outbox_review on outbox (review_id);
create index outbox_product on outbox (product_id);

create table outbox_doorbell (
    id     boolean primary key default true,
    armed  boolean not null default true,
    constraint outbox_doorbell_single_row check (id)
);
insert into outbox_doorbell default values;

create function tg_reviews__write_outbox() returns trigger
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
    );

    -- Ring only when a worker may be asleep (see the header). Each statement below takes a
    -- fresh snapshot, so the flag is read after the shared lock is held.
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

create trigger _200_write_outbox
    after insert or update or delete on reviews
    for each row execute function tg_reviews__write_outbox();
