-- One rating job per relay batch instead of one per product.
--
-- A relay batch of 500 events spread over 100 products made 100 rating jobs: 99 of every
-- 100 jobs of a backlog, each a row inserted, started, leased in Redis and marked done, for
-- a delta that updates one row. Now the relay sums the batch's deltas per product into one
-- job (`{"products": [{"product_id", "stars", "recompute"}, ...], "event_id", "actor_id",
-- "request_id"}`, no coalesce key: it takes nothing in and nothing waits for it), and
-- `apply_rating_jobs` adds each product's deltas to its summary with the job's completion,
-- as before.
--
-- With RATING_RECOMPUTE_INTERVAL set, a product whose summary changed less than the
-- interval ago still gets a job of its own, held back until the interval has passed, with
-- the product as its coalesce key: its later events join it while it waits, as before.
--
-- Jobs written before this migration carry one product's fields at the top of their
-- payload (`product_id`, `stars`, `recompute`); `rating_job_products` reads such a payload
-- as a list of that one product, so every function below takes both.
--
-- A rolling deploy runs workers of both versions on this schema for a while. A worker from
-- before it reads a rating payload into a type that needs a top-level `product_id` and
-- writes back only the fields it knows: a batch's job therefore also names its first
-- product at the top (so that it reads at all), and `apply_rating_jobs`, handed a payload
-- without the products list, applies the payloads stored with the jobs it completes (so
-- that what that worker dropped is not lost). The two are the same for every completion
-- that commits: a job's payload changes only while it waits unstarted (a merge), and a run
-- that started before the change is fenced out.

-- The products of a rating job's payload: each with its deltas per star bucket (1 to 5),
-- or recompute (the job was replayed or merged into after a failure, the product's events
-- were replayed, or the job was written before deltas). Pure: left executable by anyone,
-- like the built-in functions it is made of. Without a `set search_path` (it names only
-- built-ins, which pg_catalog resolves first) Postgres inlines it into the statement that
-- calls it; with one, each call cost as much as the rest of applying a job.
create function rating_job_products(p_payload jsonb)
returns table (product_id uuid, stars integer[], recompute boolean)
language sql immutable parallel safe
as $$
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

-- As in 0016, reading every rating job's products: a job of a batch has no coalesce key.
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

-- As in 0016, each job's products read by `rating_job_products` (from the payloads stored
-- with the jobs when one handed in has no products list; see the header): completes the jobs
-- (fenced), then, under each product's lock (in product order), adds the deltas summed per
-- product and recomputes the products that ask for it. Its statements keep one plan each
-- (`plan_cache_mode`): Postgres otherwise judged the generic plans of the statements that
-- read the products list costlier than custom ones and planned them on every call, which
-- took longer than running them (0.77 against 0.36 ms for a job of one product).
create or replace function apply_rating_jobs(p_ids bigint[], p_attempts integer[],
                                             p_payloads jsonb[], p_commit text)
returns void
language plpgsql
set search_path = public, pg_temp
set plan_cache_mode = force_generic_plan
as $$
declare
    v_product uuid;
    v_applied bigint;
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
    select count(pg_notify('rating_changed', product_id::text)) into v_applied from applied;
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

-- Merges a waiting rating job's payload with newer deltas for its products (the relay's
-- upsert into a held-back job, a job handed back into its twin): per product, the deltas
-- summed, or a recompute when either side asks for one. The result is in the list form
-- whichever form the two were in, with the newer side's top-level `product_id` (the same
-- product: both have its key). Other kinds keep what they have.
create or replace function merge_job_payloads(p_kind text, p_old jsonb, p_new jsonb) returns jsonb
language sql immutable
set search_path = public, pg_temp
as $$
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
