-- Products are what reviews are about. Each has an owner (a user id from the token's `sub`)
-- who is notified when somebody reviews it. Lists page by (created_at, id), newest first,
-- so the index below serves the keyset pagination of Query.products.

create table products (
    id          uuid        not null default gen_random_uuid(),
    name        text        not null,
    owner_id    text        not null,
    created_at  timestamptz not null default now(),
    constraint products_pkey primary key (id),
    constraint products_name_length check (char_length(name) between 1 and 200),
    constraint products_owner_id_length check (char_length(owner_id) between 1 and 200)
);

create index products_page on products (created_at desc, id desc);
