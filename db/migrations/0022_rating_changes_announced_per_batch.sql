-- apply_rating_jobs announces the products whose summaries it changed in one notification
-- on `rating_changed` per 200 products, their ids comma-separated, where it sent one per
-- product: under load ~75 a relay batch, each written to the notification queue, and each
-- a query of every API process whose live feed has subscribers (one query per notification).
-- The API reads both forms, a single id (recompute_product_rating still sends one) and a
-- list. An API from before this migration cannot read a list: it logs "could not publish a
-- live event" and its ratingChanged subscribers miss the changes applied from relay batches
-- until it is replaced. Start the new APIs before running this migration (docs/DEPLOYING.md).
create or replace function apply_rating_jobs(p_ids bigint[], p_attempts integer[],
                                             p_payloads jsonb[], p_commit text)
returns void
language plpgsql
set search_path = public, pg_temp
set plan_cache_mode = force_generic_plan
as $$
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
