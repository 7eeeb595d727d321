-- A doorbell no writer waits for, the advisory-lock keys named, and review changes the
-- outbox cannot capture refused.
--
-- The doorbell of 0005 held writers back: a writer that found the bell armed kept the
-- outbox_doorbell row locked until it committed, so every other writer that read "armed"
-- waited for it; and the relay armed under an exclusive advisory lock that queued behind a
-- writer still open, with every later writer queued behind the relay. One open transaction
-- that wrote a review (a bulk import, a forgotten psql session) stopped every review writer.
-- A REPEATABLE READ writer read the flag from its old snapshot (a lost wake-up), or failed
-- with a serialization error on the flag's row.
--
-- Now the flag is a lock, which no snapshot sees stale:
-- - A relay that runs out of work goes to sleep by taking the advisory lock "relay asleep"
--   exclusively, with pg_try_advisory_lock on its LISTEN connection: it never waits. If a
--   writer holds the lock shared (it is in flight and found the relay awake), the relay
--   cannot sleep: it keeps looking on a short timer until it can. If another relay holds it,
--   that one is asleep and the bell rings for both.
-- - A writer tries the lock shared (pg_try_advisory_xact_lock_shared, never waiting). Failing
--   means a relay is asleep: it rings (NOTIFY outbox, delivered at commit). Succeeding means
--   every relay is awake: it rings nothing, and holds the lock until it ends, which keeps a
--   relay from sleeping before the writer's rows are committed.
-- So once a relay holds the lock, every writer that found it awake has committed (or rolled
-- back), and the relay's last look before sleeping sees their rows; every later writer rings.
-- A relay whose connection dies releases the lock: writers stop ringing, and the relay's
-- listener reconnects and looks for itself.
--
-- The keys of the advisory locks the schema's functions take are named by functions here,
-- and reviews_db::locks names the same numbers (a test checks both agree).

drop table outbox_doorbell;

create function lock_key_relay_asleep() returns bigint
language sql immutable parallel safe
return 7265766965770012;

create function lock_key_rating_recompute() returns bigint
language sql immutable parallel safe
return 7265766965770011;

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

    -- Ring only when a relay is asleep (see the header); never wait.
    if not pg_try_advisory_xact_lock_shared(lock_key_relay_asleep()) then
        perform pg_notify('outbox', '');
    end if;
    return null;
end;
$$;

create or replace function recompute_product_rating(p_product_id uuid) returns void
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(hashtextextended(p_product_id::text, lock_key_rating_recompute()));
    insert into product_ratings as pr
        (product_id, review_count, rating_sum, stars_1, stars_2, stars_3, stars_4, stars_5, updated_at)
    select p.id,
           count(r.id),
           coalesce(sum(r.rating), 0),
           count(*) filter (where r.rating = 1),
           count(*) filter (where r.rating = 2),
           count(*) filter (where r.rating = 3),
           count(*) filter (where r.rating = 4),
           count(*) filter (where r.rating = 5),
           now()
    from products p
    left join reviews r on r.product_id = p.id
    where p.id = p_product_id
    group by p.id
    on conflict (product_id) do update
    set review_count = excluded.review_count,
        rating_sum = excluded.rating_sum,
        stars_1 = excluded.stars_1,
        stars_2 = excluded.stars_2,
        stars_3 = excluded.stars_3,
        stars_4 = excluded.stars_4,
        stars_5 = excluded.stars_5,
        updated_at = excluded.updated_at;
    if found then
        perform pg_notify('rating_changed', p_product_id::text);
    end if;
end;
$$;

-- TRUNCATE fires no row triggers, so it would remove reviews without a single event: their
-- ratings, notifications and webhooks would never hear of it. Refused; a DELETE (in batches
-- for many rows) writes an event per review.
create function tg_reviews__refuse_truncate() returns trigger
language plpgsql as $$
begin
    raise exception 'TRUNCATE of reviews is refused: it writes no outbox events'
        using errcode = 'feature_not_supported',
              hint = 'Delete the rows instead (in batches of a few thousand for many): each deleted review writes its review.deleted event.';
end;
$$;

create trigger _100_refuse_truncate
    before truncate on reviews
    for each statement execute function tg_reviews__refuse_truncate();

-- A lease carries a fencing token, the attempt that started the job: a runner whose lease
-- another runner took over (it stalled past the lease) records nothing. Completions,
-- retries and burials check `attempts` in their statements; hand-back checks it here.
-- Gives attempt p_attempt back if the job is still pending at it; false when it is not.
create function hand_back_job(p_job_id bigint, p_attempt integer) returns boolean
language plpgsql as $$
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
        update jobs set attempts = 0 where id = p_job_id;
    end if;
    return true;
end;
$$;

-- The hand-back without a fencing token (workers before this migration).
drop function hand_back_job(bigint);
