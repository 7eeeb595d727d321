-- Live subscriptions (GraphQL `ratingChanged`) need to hear when a product's summary was
-- recomputed. This replaces the function of 0008 with one that also sends
-- NOTIFY rating_changed with the product id. Only the worker calls it, once per recompute
-- job, so writers of reviews pay nothing for it.

create or replace function recompute_product_rating(p_product_id uuid) returns void
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
    if found then
        perform pg_notify('rating_changed', p_product_id::text);
    end if;
end;
$$;
