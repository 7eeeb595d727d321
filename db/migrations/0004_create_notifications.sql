-- Notifications for users, written by the worker (a product's owner hears of new reviews).
-- event_id is the outbox event that caused the notification; the unique constraint makes the
-- job idempotent: a redelivered event inserts nothing new. review_id and product_id carry no
-- foreign keys on purpose: a notification outlives a deleted review.

create table notifications (
    id            uuid        not null default gen_random_uuid(),
    recipient_id  text        not null,
    kind          text        not null,
    review_id     uuid,
    product_id    uuid,
    event_id      uuid        not null,
    created_at    timestamptz not null default now(),
    read_at       timestamptz,
    constraint notifications_pkey primary key (id),
    constraint notifications_once_per_event unique (event_id, recipient_id, kind)
);

-- Serves Query.notifications: the caller's, newest first.
create index notifications_recipient_page on notifications (recipient_id, created_at desc, id desc);
