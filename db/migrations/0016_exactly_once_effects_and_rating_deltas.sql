-- Exactly-once effects, rating summaries kept by deltas, and bookkeeping that may commit
-- asynchronously.
--
-- Effects and completion in one statement. A job whose effects are rows of this database
-- (a notification, a rating summary) now writes them in the statement that marks it done,
-- and that statement fails whole unless every job it completes is still pending at the
-- attempt that ran it (`complete_jobs_fenced`). Committed, the job cannot run again; not
-- committed, neither happened. Before, the effects committed first and the completion
-- after: a crash in between re-ran the job, harmless only because each effect was
-- idempotent.
--
-- Rating summaries by deltas. A review event carries its delta (+1 in the new rating's
-- bucket of the new product, -1 in the old rating's of the old: `review_rating_deltas`);
-- the relay sums them per product into the product's rating job (a job that waits
-- unstarted takes the new deltas in), and `apply_rating_jobs` adds them to the summary with
-- the jobs' completion: exactly once. Counting a busy product's reviews again on every
-- event was the worker's largest cost.
--
-- The full recompute stays: for replayed events and dead letters (a replay must not apply a
-- delta twice: its job recomputes), for jobs written before this migration, and as the
-- repair path (scripts/repair-ratings). It is exact whatever runs beside it: under the
-- product's lock (which every delta application takes too) it counts the reviews and takes
-- away, in the same snapshot, the deltas still on their way: events not relayed yet, and
-- rating jobs relayed but not applied.
--
-- Asynchronous bookkeeping. Every function here takes the `synchronous_commit` the worker
-- asks for its own transaction (`p_commit`, null: unchanged). A lost tail of WAL can only
-- make work run again, and the effects are transactional: the writers' transactions are
-- never asynchronous.

-- Events replayed by scripts/replay-events: their rating jobs recompute instead of applying
-- deltas that were applied already.
alter table outbox_pending add column replayed boolean not null default false;

-- The rating deltas of one review event's payload (`old` and `new` rows, as the outbox
-- trigger writes them): (product, stars, +1 or -1).
create function review_rating_deltas(p_payload jsonb)
returns table (product_id uuid, rating integer, delta integer)
language sql immutable parallel safe
set search_path = public, pg_temp
as $$
    select (p_payload->'old'->>'product_id')::uuid, (p_payload->'old'->>'rating')::integer, -1
    where jsonb_typeof(p_payload->'old') = 'object'
    union all
    select (p_payload->'new'->>'product_id')::uuid, (p_payload->'new'->>'rating')::integer, 1
    where jsonb_typeof(p_payload->'new') = 'object'
$$;

-- Marks the jobs done, each at the attempt that ran it, or fails the whole statement (SQLSTATE
-- RVFNC) when any is no longer pending at that attempt: another runner took it over, or it
-- ended. Rows are locked in id order. Returns how many.
create function complete_jobs_fenced(p_ids bigint[], p_attempts integer[], p_commit text)
returns integer
language plpgsql
set search_path = public, pg_temp
as $$
declare
    v_done integer;
begin
    if p_commit is not null then
        perform set_config('synchronous_commit', p_commit, true);
    end if;
    -- Looked up through the primary key alone (see jobs.rs: `by_id`).
    update jobs set status = 'done', finished_at = now()
    where id = any (array(
        select j.id
        from unnest(p_ids, p_attempts) as wanted (id, attempt)
        cross join lateral (
            select id, status, attempts from jobs
            where jobs.id = wanted.id offset 0 for update
        ) j
        where j.status = 'pending' and j.attempts = wanted.attempt
        order by j.id));
    get diagnostics v_done = row_count;
    if v_done <> cardinality(p_ids) then
        raise exception 'job completion fenced: % of % jobs are no longer at the attempt that ran them',
            cardinality(p_ids) - v_done, cardinality(p_ids)
            using errcode = 'RVFNC';
    end if;
    return v_done;
end;
$$;

-- The exact summary of one product, whatever runs beside it: see the header.
create or replace function recompute_product_rating(p_product_id uuid) returns void
language plpgsql
set search_path = public, pg_temp
as $$
begin
    perform pg_advisory_xact_lock(hashtextextended(p_product_id::text, lock_key_rating_recompute()));
    insert into product_ratings as pr
        (product_id, review_count, rating_sum, stars_1, stars_2, stars_3, stars_4, stars_5, updated_at)
    select p_product_id, coalesce(sum(n), 0), coalesce(sum(n * rating), 0),
           coalesce(sum(n) filter (where rating = 1), 0),
           coalesce(sum(n) filter (where rating = 2), 0),
           coalesce(sum(n) filter (where rating = 3), 0),
           coalesce(sum(n) filter (where rating = 4), 0),
           coalesce(sum(n) filter (where rating = 5), 0),
           now()
    from (
        select r.rating::integer, 1 from reviews r where r.product_id = p_product_id
        union all
        -- Events not relayed yet, whose jobs will apply their deltas.
        select d.rating, -d.delta
        from outbox_pending op
        join outbox o on o.id = op.id
        cross join lateral review_rating_deltas(o.payload) d
        where not op.replayed and d.product_id = p_product_id
        union all
        -- Rating jobs relayed and not applied yet.
        select stars.rating, -(j.payload->'stars'->>(stars.rating - 1))::integer
        from jobs j
        cross join generate_series(1, 5) as stars (rating)
        where j.kind = 'recompute_rating' and j.status = 'pending'
          and j.coalesce_key = p_product_id::text
          and jsonb_typeof(j.payload->'stars') = 'array'
          and not coalesce((j.payload->>'recompute')::boolean, false)
    ) as counted (rating, n)
    having exists (select 1 from products where id = p_product_id)
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

-- Settles rating jobs with their effects, in one statement: completes them (fenced), then,
-- under each product's lock (in product order), adds the deltas of the jobs that carry
-- them, summed per product, and recomputes the products of those that ask for it (replays,
-- old jobs, a job merged into after a failure).
create function apply_rating_jobs(p_ids bigint[], p_attempts integer[], p_payloads jsonb[],
                                  p_commit text)
returns void
language plpgsql
set search_path = public, pg_temp
as $$
declare
    v_product uuid;
    v_applied bigint;
begin
    perform complete_jobs_fenced(p_ids, p_attempts, p_commit);
    perform pg_advisory_xact_lock(hashtextextended(product_id::text, lock_key_rating_recompute()))
    from (select distinct (payload->>'product_id')::uuid as product_id
          from unnest(p_payloads) as jobs (payload)
          order by 1) products;
    with deltas as (
        select (payload->>'product_id')::uuid as product_id,
               sum((payload->'stars'->>0)::integer) as s1,
               sum((payload->'stars'->>1)::integer) as s2,
               sum((payload->'stars'->>2)::integer) as s3,
               sum((payload->'stars'->>3)::integer) as s4,
               sum((payload->'stars'->>4)::integer) as s5
        from unnest(p_payloads) as jobs (payload)
        where jsonb_typeof(payload->'stars') = 'array'
          and not coalesce((payload->>'recompute')::boolean, false)
        group by 1
    ), applied as (
        insert into product_ratings as pr
            (product_id, review_count, rating_sum, stars_1, stars_2, stars_3, stars_4, stars_5,
             updated_at)
        select d.product_id, d.s1 + d.s2 + d.s3 + d.s4 + d.s5,
               d.s1 + 2 * d.s2 + 3 * d.s3 + 4 * d.s4 + 5 * d.s5,
               d.s1, d.s2, d.s3, d.s4, d.s5, now()
        from deltas d
        join products p on p.id = d.product_id
        order by d.product_id
        on conflict (product_id) do update
        set review_count = pr.review_count + excluded.review_count,
            rating_sum = pr.rating_sum + excluded.rating_sum,
            stars_1 = pr.stars_1 + excluded.stars_1,
            stars_2 = pr.stars_2 + excluded.stars_2,
            stars_3 = pr.stars_3 + excluded.stars_3,
            stars_4 = pr.stars_4 + excluded.stars_4,
            stars_5 = pr.stars_5 + excluded.stars_5,
            updated_at = excluded.updated_at
        returning product_id
    )
    select count(pg_notify('rating_changed', product_id::text)) into v_applied from applied;
    for v_product in
        select distinct (payload->>'product_id')::uuid
        from unnest(p_payloads) as jobs (payload)
        where jsonb_typeof(payload->'stars') <> 'array'
           or coalesce((payload->>'recompute')::boolean, false)
        order by 1
    loop
        perform recompute_product_rating(v_product);
    end loop;
end;
$$;

-- A rating job merged into its waiting twin (handed back, replayed) brings deltas the twin
-- does not carry: the twin recomputes instead.
create or replace function merge_into_waiting_twin(p_job_id bigint, p_status text, p_how text)
returns boolean
language plpgsql
set search_path = public, pg_temp
as $$
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
    update jobs set payload = payload || '{"recompute": true}'
    where id = v_twin and kind = 'recompute_rating';
    return true;
end;
$$;

-- A rating job replayed from its dead letter recomputes: whether its deltas were applied is
-- what a dead letter leaves in doubt.
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
    if not merge_into_waiting_twin(v_job_id, 'dead', 'replayed') then
        update jobs
        set status = 'pending', attempts = 0, run_at = now(), last_error = null, finished_at = null,
            payload = case when kind = 'recompute_rating'
                           then payload || '{"recompute": true}' else payload end
        where id = v_job_id and status = 'dead';
        perform pg_notify('jobs', '');
    end if;
    return true;
end;
$$;

-- Merges a rating job's payload with the deltas of newer events for the same product (the
-- relay's upsert into a job that waits unstarted); other kinds keep what they have.
create function merge_job_payloads(p_kind text, p_old jsonb, p_new jsonb) returns jsonb
language sql immutable
set search_path = public, pg_temp
as $$
    select case
        when p_kind <> 'recompute_rating' then p_old
        when jsonb_typeof(p_old->'stars') <> 'array' or jsonb_typeof(p_new->'stars') <> 'array'
            then p_new || '{"recompute": true}'
        else p_new || jsonb_build_object(
            'stars', (select jsonb_agg(o.v::integer + n.v::integer order by o.i)
                      from jsonb_array_elements_text(p_old->'stars') with ordinality o (v, i)
                      join jsonb_array_elements_text(p_new->'stars') with ordinality n (v, i)
                        on n.i = o.i),
            'recompute', coalesce((p_old->>'recompute')::boolean, false)
                         or coalesce((p_new->>'recompute')::boolean, false))
    end
$$;

revoke execute on function review_rating_deltas(jsonb), complete_jobs_fenced(bigint[], integer[], text),
    apply_rating_jobs(bigint[], integer[], jsonb[], text), merge_job_payloads(text, jsonb, jsonb)
    from public;

create or replace function grant_app_privileges() returns text
language plpgsql as $$
declare
    v_api name := nullif(current_setting('reviews.api_role', true), '');
    v_worker name := nullif(current_setting('reviews.worker_role', true), '');
    v_role name;
    v_done text[] := '{}';
begin
    foreach v_role in array array_remove(array[v_api, v_worker], null) loop
        continue when not exists (select 1 from pg_roles where rolname = v_role);
        execute format('revoke all on all tables in schema public from %I', v_role);
        execute format('revoke all on all sequences in schema public from %I', v_role);
        execute format('revoke all on all functions in schema public from %I', v_role);
        execute format('grant usage on schema public to %I', v_role);
        v_done := v_done || v_role::text;
    end loop;

    if v_api = any (v_done) then
        execute format($g$
            grant select, insert on products to %1$I;
            grant select, insert, update, delete on reviews to %1$I;
            grant select on outbox, product_ratings, notifications, dead_jobs, retry_policies,
                            webhook_deliveries to %1$I;
            grant update (max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter, updated_at)
                on retry_policies to %1$I;
            grant select (id, url, event_types, description, paused, disabled_at, disabled_reason,
                          created_at, updated_at, previous_secret_expires_at) on webhooks to %1$I;
            grant insert (url, event_types, description, secret) on webhooks to %1$I;
            grant update (url, event_types, description, paused, secret, previous_secret,
                          previous_secret_expires_at, disabled_at, disabled_reason, updated_at)
                on webhooks to %1$I;
            grant delete on webhooks to %1$I;
            grant execute on function replay_dead_job(bigint), tg_reviews__write_outbox()
                to %1$I;
            $g$, v_api);
    end if;

    if v_worker = any (v_done) then
        execute format($g$
            grant select on products, reviews, outbox, webhooks to %1$I;
            grant select, update, delete on outbox_pending to %1$I;
            grant select, insert, update on jobs, product_ratings to %1$I;
            grant select, insert on dead_jobs, notifications, webhook_deliveries to %1$I;
            grant select, insert on retry_policies to %1$I;
            grant update (disabled_at, disabled_reason, updated_at) on webhooks to %1$I;
            grant usage on all sequences in schema public to %1$I;
            grant execute on function recompute_product_rating(uuid), hand_back_job(bigint, integer),
                merge_into_waiting_twin(bigint, text, text), replay_dead_job(bigint),
                lock_key_relay_asleep(), lock_key_rating_recompute(),
                complete_jobs_fenced(bigint[], integer[], text),
                apply_rating_jobs(bigint[], integer[], jsonb[], text),
                review_rating_deltas(jsonb), merge_job_payloads(text, jsonb, jsonb)
                to %1$I;
            $g$, v_worker);
    end if;
    return coalesce(nullif(array_to_string(v_done, ', '), ''), 'no app roles');
end;
$$;

select grant_app_privileges();
