-- Webhooks: external endpoints that receive review events, signed with the Standard Webhooks
-- scheme. The relay creates one deliver_webhook job per matching endpoint and event (while
-- the endpoint is neither paused nor disabled); every attempt is recorded in
-- webhook_deliveries. An endpoint answering 410 Gone is disabled.
--
-- The secret is stored as given to the client ("whsec_" + base64 key): a webhook receiver
-- needs the same bytes to verify, and the API shows it only once.

create table webhooks (
    id               uuid        not null default gen_random_uuid(),
    url              text        not null,
    event_types      text[]      not null,
    description      text        not null default '',
    secret           text        not null,
    paused           boolean     not null default false,
    disabled_at      timestamptz,
    disabled_reason  text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    constraint webhooks_pkey primary key (id),
    constraint webhooks_url_length check (char_length(url) between 1 and 2000),
    constraint webhooks_description_length check (char_length(description) <= 500),
    constraint webhooks_event_types_known check (
        cardinality(event_types) > 0
        and event_types <@ array['review.created', 'review.updated', 'review.deleted']::text[])
);

create table webhook_deliveries (
    id           bigint      generated always as identity,
    webhook_id   uuid        not null,
    event_id     uuid        not null,
    job_id       bigint,
    attempt      integer     not null,
    status_code  integer,
    duration_ms  integer     not null,
    error        text,
    created_at   timestamptz not null default now(),
    constraint webhook_deliveries_pkey primary key (id),
    constraint webhook_deliveries_webhook_id_fkey foreign key (webhook_id)
        references webhooks (id) on delete cascade
);

create index webhook_deliveries_page on webhook_deliveries (webhook_id, created_at desc, id desc);

-- Remote systems get a longer, gentler schedule: 12 attempts from 5 s doubling to 1 h.
insert into retry_policies (kind, max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter)
values ('deliver_webhook', 12, 5000, 2, 3600000, 0.3);
