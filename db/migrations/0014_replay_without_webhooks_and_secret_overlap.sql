-- Two things a webhook receiver may rightly expect:
--
-- A replayed event re-sends webhooks only when asked. scripts/replay-events marks events
-- pending again to rebuild ratings after a fix; re-delivering their webhooks (to endpoints
-- that may not even have existed when the events happened) surprised receivers. A pending
-- event now says whether its webhooks are delivered (`webhooks`): true for every event the
-- trigger writes, and for a replay only with --webhooks. And whatever the flag, an event is
-- never delivered to an endpoint registered after it occurred.
--
-- A rotated secret keeps signing for an overlap. Receivers holding the old secret failed at
-- once after `rotateSecret`. Now the old secret is kept, with when it stops signing, and
-- until then every delivery carries both signatures (Standard Webhooks: several `v1,`
-- signatures, space-separated).

alter table outbox_pending add column webhooks boolean not null default true;

alter table webhooks
    add column previous_secret text,
    add column previous_secret_expires_at timestamptz,
    add constraint webhooks_previous_secret_expires
        check ((previous_secret is null) = (previous_secret_expires_at is null));
