-- The rating summary of each product: how many reviews, the sum of their stars (the average is
-- sum / count, computed on read so it is never stale against the count) and a histogram with
-- one bucket per star. The worker recomputes a row from the reviews table after every review
-- event, so duplicates and reordering of events cannot skew it. A product with no row has no
-- reviews yet; the API answers zeros for it.

create table product_ratings (
    product_id    uuid        not null,
    review_count  integer     not null default 0,
    rating_sum    integer     not null default 0,
    stars_1       integer     not null default 0,
    stars_2       integer     not null default 0,
    stars_3       integer     not null default 0,
    stars_4       integer     not null default 0,
    stars_5       integer     not null default 0,
    updated_at    timestamptz not null default now(),
    constraint product_ratings_pkey primary key (product_id),
    constraint product_ratings_product_id_fkey foreign key (product_id)
        references products (id) on delete cascade,
    constraint product_ratings_counts_agree
        check (review_count = stars_1 + stars_2 + stars_3 + stars_4 + stars_5)
);
