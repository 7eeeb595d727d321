-- Reviews: one per author per product, rated 1..5 stars, with a title and a body of bounded
-- length. The constraint names are part of the API's contract: the access layer maps them to
-- client errors (reviews_one_per_author -> CONFLICT, the checks -> BAD_USER_INPUT).
-- updated_at is kept by a trigger so writes from psql get it too.

create table reviews (
    id          uuid        not null default gen_random_uuid(),
    product_id  uuid        not null,
    author_id   text        not null,
    rating      smallint    not null,
    title       text        not null,
    body        text        not null,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    constraint reviews_pkey primary key (id),
    constraint reviews_product_id_fkey foreign key (product_id)
        references products (id) on delete cascade,
    constraint reviews_rating_range check (rating between 1 and 5),
    constraint reviews_title_length check (char_length(title) between 1 and 200),
    constraint reviews_body_length check (char_length(body) between 1 and 10000),
    constraint reviews_author_id_length check (char_length(author_id) between 1 and 200),
    constraint reviews_one_per_author unique (product_id, author_id)
);

-- Serves Query.reviews(productId) and Product.reviews: newest first, keyset by (created_at, id).
create index reviews_product_page on reviews (product_id, created_at desc, id desc);

create function tg_reviews__touch_updated_at() returns trigger
language plpgsql as $$
begin
    new.updated_at := now();
    return new;
end;
$$;

create trigger _100_touch_updated_at
    before update on reviews
    for each row execute function tg_reviews__touch_updated_at();
