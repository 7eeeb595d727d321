-- The schema db/migrations build, for reading at a glance (the migrations are the
-- history). Written by scripts/dump-schema; a test fails when it differs from them.

CREATE FUNCTION public.applied_schema_version() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select max(version) from schema_migrations
$$;

CREATE FUNCTION public.apply_rating_jobs(p_ids bigint[], p_attempts integer[], p_payloads jsonb[], p_commit text) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    SET plan_cache_mode TO 'force_generic_plan'
    SET enable_seqscan TO 'off'
    AS $$
declare
    v_product uuid;
    v_announcements bigint;
begin
    perform complete_jobs_fenced(p_ids, p_attempts, p_commit);
    -- A payload without a products list comes from a worker from before batch jobs (or is
    -- a job's from before them): the stored ones, locked by the completion, looked up by
    -- the primary key (see jobs.rs: `by_id`).
    if exists (select from unnest(p_payloads) as jobs (payload) where not payload ? 'products') then
        p_payloads := array(select j.payload
                            from unnest(p_ids) as wanted (id)
                            cross join lateral (select payload from jobs
                                                where jobs.id = wanted.id offset 0) j);
    end if;
    perform pg_advisory_xact_lock(hashtextextended(product_id::text, lock_key_rating_recompute()))
    from (select distinct e.product_id
          from unnest(p_payloads) as jobs (payload)
          cross join lateral rating_job_products(payload) e
          order by 1) products;
    with deltas as (
        select e.product_id,
               sum(e.stars[1]) as s1, sum(e.stars[2]) as s2, sum(e.stars[3]) as s3,
               sum(e.stars[4]) as s4, sum(e.stars[5]) as s5
        from unnest(p_payloads) as jobs (payload)
        cross join lateral rating_job_products(payload) e
        where not e.recompute
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
    -- One notification per 200 products (200 ids of 37 bytes stay under the 8,000-byte
    -- payload limit), not one per product.
    select count(pg_notify('rating_changed', ids)) into v_announcements
    from (select string_agg(product_id::text, ',' order by product_id) as ids
          from (select product_id, (row_number() over (order by product_id) - 1) / 200 as part
                from applied) numbered
          group by part) announced;
    for v_product in
        select distinct e.product_id
        from unnest(p_payloads) as jobs (payload)
        cross join lateral rating_job_products(payload) e
        where e.recompute
        order by 1
    loop
        perform recompute_product_rating(v_product);
    end loop;
end;
$$;

CREATE FUNCTION public.complete_jobs_fenced(p_ids bigint[], p_attempts integer[], p_commit text) RETURNS integer
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
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

CREATE FUNCTION public.grant_app_privileges() RETURNS text
    LANGUAGE plpgsql
    AS $_$
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
$_$;

CREATE FUNCTION public.hand_back_job(p_job_id bigint, p_attempt integer) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
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

CREATE FUNCTION public.lock_key_rating_recompute() RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '7265766965770011'::bigint;

CREATE FUNCTION public.lock_key_relay_asleep() RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '7265766965770012'::bigint;

CREATE FUNCTION public.merge_into_waiting_twin(p_job_id bigint, p_status text, p_how text) RETURNS boolean
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
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

CREATE FUNCTION public.merge_job_payloads(p_kind text, p_old jsonb, p_new jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select case
        when p_kind <> 'recompute_rating' then p_old
        else (p_new - 'stars' - 'recompute') || jsonb_build_object(
            'products', (
                select jsonb_agg(case when recompute
                                      then jsonb_build_object('product_id', product_id,
                                                              'recompute', true)
                                      else jsonb_build_object('product_id', product_id,
                                                              'stars', to_jsonb(stars),
                                                              'recompute', false) end
                                 order by product_id)
                from (select e.product_id, bool_or(e.recompute) as recompute,
                             array[sum(e.stars[1]), sum(e.stars[2]), sum(e.stars[3]),
                                   sum(e.stars[4]), sum(e.stars[5])]::integer[] as stars
                      from (select * from rating_job_products(p_old)
                            union all
                            select * from rating_job_products(p_new)) as e
                      group by e.product_id) as merged))
    end
$$;

CREATE FUNCTION public.notify_job_outbox_ids(p_payload jsonb) RETURNS SETOF bigint
    LANGUAGE sql STABLE ROWS 500
    AS $_$
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
$_$;

CREATE FUNCTION public.rating_job_products(p_payload jsonb) RETURNS TABLE(product_id uuid, stars integer[], recompute boolean)
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    select (e->>'product_id')::uuid,
           case when jsonb_typeof(e->'stars') = 'array'
                then array[(e->'stars'->>0)::integer, (e->'stars'->>1)::integer,
                           (e->'stars'->>2)::integer, (e->'stars'->>3)::integer,
                           (e->'stars'->>4)::integer] end,
           jsonb_typeof(e->'stars') is distinct from 'array'
               or coalesce((e->>'recompute')::boolean, false)
               or coalesce((p_payload->>'recompute')::boolean, false)
    from jsonb_array_elements(case when jsonb_typeof(p_payload->'products') = 'array'
                                   then p_payload->'products'
                                   else jsonb_build_array(p_payload) end) as e
$$;

CREATE FUNCTION public.recompute_product_rating(p_product_id uuid) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'public', 'pg_temp'
    AS $$
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
        -- Rating jobs relayed and not applied yet: a batch's (no key) and a held-back one's
        -- (the product's key).
        select stars.rating, -e.stars[stars.rating]
        from jobs j
        cross join lateral rating_job_products(j.payload) e
        cross join generate_series(1, 5) as stars (rating)
        where j.kind = 'recompute_rating' and j.status = 'pending'
          and (j.coalesce_key is null or j.coalesce_key = p_product_id::text)
          and e.product_id = p_product_id and not e.recompute
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

CREATE FUNCTION public.replay_dead_job(p_dead_job_id bigint) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.review_rating_deltas(p_payload jsonb) RETURNS TABLE(product_id uuid, rating integer, delta integer)
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    SET search_path TO 'public', 'pg_temp'
    AS $$
    select (p_payload->'old'->>'product_id')::uuid, (p_payload->'old'->>'rating')::integer, -1
    where jsonb_typeof(p_payload->'old') = 'object'
    union all
    select (p_payload->'new'->>'product_id')::uuid, (p_payload->'new'->>'rating')::integer, 1
    where jsonb_typeof(p_payload->'new') = 'object'
$$;

CREATE FUNCTION public.tg_retry_policies__announce_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    perform pg_notify('retry_policies', '');
    return null;
end;
$$;

CREATE FUNCTION public.tg_reviews__refuse_truncate() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    raise exception 'TRUNCATE of reviews is refused: it writes no outbox events'
        using errcode = 'feature_not_supported',
              hint = 'Delete the rows instead (in batches of a few thousand for many): each deleted review writes its review.deleted event.';
end;
$$;

CREATE FUNCTION public.tg_reviews__touch_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
begin
    new.updated_at := now();
    return new;
end;
$$;

CREATE FUNCTION public.tg_reviews__write_outbox() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'public', 'pg_temp'
    AS $$
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

CREATE FUNCTION public.time_ordered_uuid() RETURNS uuid
    LANGUAGE sql PARALLEL SAFE
    AS $$
    select encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        placing substring(int8send(floor(extract(epoch from clock_timestamp())
                                                         * 1000)::bigint) from 3)
                        from 1 for 6),
                52, 1),
            53, 1),
        'hex')::uuid
$$;

CREATE TABLE public.dead_jobs (
    id bigint NOT NULL,
    job_id bigint NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    attempts integer NOT NULL,
    last_error text,
    created_at timestamp with time zone NOT NULL,
    died_at timestamp with time zone DEFAULT now() NOT NULL,
    replayed_at timestamp with time zone
);

ALTER TABLE public.dead_jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.dead_jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.jobs (
    id bigint NOT NULL,
    kind text NOT NULL,
    event_id uuid,
    coalesce_key text,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    status text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    last_error text,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_started_at timestamp with time zone,
    finished_at timestamp with time zone,
    CONSTRAINT jobs_attempts_non_negative CHECK ((attempts >= 0)),
    CONSTRAINT jobs_status_known CHECK ((status = ANY (ARRAY['pending'::text, 'done'::text, 'dead'::text])))
);

ALTER TABLE public.jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.notifications (
    id uuid DEFAULT public.time_ordered_uuid() NOT NULL,
    recipient_id text NOT NULL,
    kind text NOT NULL,
    review_id uuid,
    product_id uuid,
    event_id uuid NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    read_at timestamp with time zone
);

CREATE TABLE public.outbox (
    id bigint NOT NULL,
    event_id uuid DEFAULT public.time_ordered_uuid() NOT NULL,
    event_type text NOT NULL,
    review_id uuid NOT NULL,
    product_id uuid NOT NULL,
    payload jsonb NOT NULL,
    actor_id text,
    request_id text,
    schema_version smallint DEFAULT 1 NOT NULL,
    occurred_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT outbox_event_type_known CHECK ((event_type = ANY (ARRAY['review.created'::text, 'review.updated'::text, 'review.deleted'::text])))
);

ALTER TABLE public.outbox ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.outbox_pending (
    id bigint NOT NULL,
    webhooks boolean DEFAULT true NOT NULL,
    replayed boolean DEFAULT false NOT NULL
);

CREATE TABLE public.product_ratings (
    product_id uuid NOT NULL,
    review_count integer DEFAULT 0 NOT NULL,
    rating_sum integer DEFAULT 0 NOT NULL,
    stars_1 integer DEFAULT 0 NOT NULL,
    stars_2 integer DEFAULT 0 NOT NULL,
    stars_3 integer DEFAULT 0 NOT NULL,
    stars_4 integer DEFAULT 0 NOT NULL,
    stars_5 integer DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT product_ratings_counts_agree CHECK ((review_count = ((((stars_1 + stars_2) + stars_3) + stars_4) + stars_5)))
);

CREATE TABLE public.products (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    name text NOT NULL,
    owner_id text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT products_name_length CHECK (((char_length(name) >= 1) AND (char_length(name) <= 200))),
    CONSTRAINT products_owner_id_length CHECK (((char_length(owner_id) >= 1) AND (char_length(owner_id) <= 200)))
);

CREATE TABLE public.retry_policies (
    kind text NOT NULL,
    max_attempts integer NOT NULL,
    base_delay_ms bigint NOT NULL,
    multiplier double precision NOT NULL,
    max_delay_ms bigint NOT NULL,
    jitter double precision NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT retry_policies_base_positive CHECK ((base_delay_ms > 0)),
    CONSTRAINT retry_policies_jitter_range CHECK (((jitter >= (0)::double precision) AND (jitter <= (1)::double precision))),
    CONSTRAINT retry_policies_max_attempts_range CHECK (((max_attempts >= 1) AND (max_attempts <= 1000))),
    CONSTRAINT retry_policies_max_not_below_base CHECK ((max_delay_ms >= base_delay_ms)),
    CONSTRAINT retry_policies_multiplier_range CHECK ((multiplier >= (1)::double precision))
);

CREATE TABLE public.reviews (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    product_id uuid NOT NULL,
    author_id text NOT NULL,
    rating smallint NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT reviews_author_id_length CHECK (((char_length(author_id) >= 1) AND (char_length(author_id) <= 200))),
    CONSTRAINT reviews_body_length CHECK (((char_length(body) >= 1) AND (char_length(body) <= 10000))),
    CONSTRAINT reviews_rating_range CHECK (((rating >= 1) AND (rating <= 5))),
    CONSTRAINT reviews_title_length CHECK (((char_length(title) >= 1) AND (char_length(title) <= 200)))
);

CREATE TABLE public.schema_migrations (
    version text NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    applied_by text NOT NULL
);

CREATE TABLE public.webhook_deliveries (
    id bigint NOT NULL,
    webhook_id uuid NOT NULL,
    event_id uuid NOT NULL,
    job_id bigint,
    attempt integer NOT NULL,
    status_code integer,
    duration_ms integer NOT NULL,
    error text,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE public.webhook_deliveries ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME public.webhook_deliveries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

CREATE TABLE public.webhooks (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    url text NOT NULL,
    event_types text[] NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    secret text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    disabled_at timestamp with time zone,
    disabled_reason text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    previous_secret text,
    previous_secret_expires_at timestamp with time zone,
    CONSTRAINT webhooks_description_length CHECK ((char_length(description) <= 500)),
    CONSTRAINT webhooks_event_types_known CHECK (((cardinality(event_types) > 0) AND (event_types <@ ARRAY['review.created'::text, 'review.updated'::text, 'review.deleted'::text]))),
    CONSTRAINT webhooks_previous_secret_expires CHECK (((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))),
    CONSTRAINT webhooks_url_length CHECK (((char_length(url) >= 1) AND (char_length(url) <= 2000)))
);

ALTER TABLE ONLY public.dead_jobs
    ADD CONSTRAINT dead_jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.notifications
    ADD CONSTRAINT notifications_once_per_event UNIQUE (event_id, recipient_id, kind);

ALTER TABLE ONLY public.notifications
    ADD CONSTRAINT notifications_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_event_id_key UNIQUE (event_id);

ALTER TABLE ONLY public.outbox_pending
    ADD CONSTRAINT outbox_pending_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.product_ratings
    ADD CONSTRAINT product_ratings_pkey PRIMARY KEY (product_id);

ALTER TABLE ONLY public.products
    ADD CONSTRAINT products_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.retry_policies
    ADD CONSTRAINT retry_policies_pkey PRIMARY KEY (kind);

ALTER TABLE ONLY public.reviews
    ADD CONSTRAINT reviews_one_per_author UNIQUE (product_id, author_id);

ALTER TABLE ONLY public.reviews
    ADD CONSTRAINT reviews_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.webhooks
    ADD CONSTRAINT webhooks_pkey PRIMARY KEY (id);

CREATE INDEX dead_jobs_kind_died_at ON public.dead_jobs USING btree (kind, died_at);

CREATE UNIQUE INDEX dead_jobs_one_open_per_job ON public.dead_jobs USING btree (job_id) WHERE (replayed_at IS NULL);

CREATE UNIQUE INDEX jobs_coalesce ON public.jobs USING btree (kind, coalesce_key) WHERE ((status = 'pending'::text) AND (attempts = 0) AND (coalesce_key IS NOT NULL));

CREATE INDEX jobs_event ON public.jobs USING btree (event_id);

CREATE INDEX jobs_pending_run_at ON public.jobs USING btree (run_at) WHERE (status = 'pending'::text);

CREATE INDEX notifications_recipient_page ON public.notifications USING btree (recipient_id, created_at DESC, id DESC);

CREATE INDEX outbox_product ON public.outbox USING btree (product_id);

CREATE INDEX outbox_review ON public.outbox USING btree (review_id);

CREATE INDEX products_page ON public.products USING btree (created_at DESC, id DESC);

CREATE INDEX reviews_product_page ON public.reviews USING btree (product_id, created_at DESC, id DESC);

CREATE INDEX webhook_deliveries_page ON public.webhook_deliveries USING btree (webhook_id, created_at DESC, id DESC);

CREATE TRIGGER _100_announce_change AFTER INSERT OR DELETE OR UPDATE ON public.retry_policies FOR EACH STATEMENT EXECUTE FUNCTION public.tg_retry_policies__announce_change();

CREATE TRIGGER _100_refuse_truncate BEFORE TRUNCATE ON public.reviews FOR EACH STATEMENT EXECUTE FUNCTION public.tg_reviews__refuse_truncate();

CREATE TRIGGER _100_touch_updated_at BEFORE UPDATE ON public.reviews FOR EACH ROW EXECUTE FUNCTION public.tg_reviews__touch_updated_at();

CREATE TRIGGER _200_write_outbox AFTER INSERT OR DELETE OR UPDATE ON public.reviews FOR EACH ROW EXECUTE FUNCTION public.tg_reviews__write_outbox();

ALTER TABLE ONLY public.dead_jobs
    ADD CONSTRAINT dead_jobs_job_id_fkey FOREIGN KEY (job_id) REFERENCES public.jobs(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.product_ratings
    ADD CONSTRAINT product_ratings_product_id_fkey FOREIGN KEY (product_id) REFERENCES public.products(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.reviews
    ADD CONSTRAINT reviews_product_id_fkey FOREIGN KEY (product_id) REFERENCES public.products(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_webhook_id_fkey FOREIGN KEY (webhook_id) REFERENCES public.webhooks(id) ON DELETE CASCADE;

