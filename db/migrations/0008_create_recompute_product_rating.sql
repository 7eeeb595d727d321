-- Recomputes one product's rating summary from the reviews table, so duplicated or reordered
-- events cannot skew it. Concurrent recomputes of one product are serialised by an advisory
-- lock, and the aggregate runs after the lock is held (a fresh snapshot per statement), so
-- the last writer always saw at least what the earlier ones saw. A product that no longer
-- exists has no summary to keep.

create function recompute_product_rating(p_product_id uuid) returns void
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(hashtextextended(p_product_id::text, 7265766965770011));
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
end;
$$;
