-- Event ids and notification ids are time-ordered (the layout of UUID version 7: 48 bits of
-- Unix milliseconds, then random bits), not random. Each is a key of a unique index that
-- every event writes to: `outbox_event_id_key` (the writer's transaction), `jobs_event` (the
-- relay's), `notifications_once_per_event` and `notifications_pkey` (the notify handler's).
-- A random key lands each insert on its own leaf page of the index: once an index outgrows
-- the cache, or after every checkpoint (a full-page image per leaf first touched), that is a
-- page read or an 8 kB WAL write per row. Time-ordered keys land together at the right edge.
-- 500 notifications took 22-25 ms to insert into a table of 300,000 rows against 6.6-7.6 ms
-- into a bare one (docs/PERFORMANCE.md run K): that insert bounds the drain.
-- Ids already written stay as they are; nothing reads an order into them.

-- Changing a default takes each table's ACCESS EXCLUSIVE lock for a moment, but waiting for
-- it behind a writer's open transaction would queue every new writer behind this migration:
-- give up after 5 s instead (the migration fails with "lock timeout" and can be run again).
set local lock_timeout = '5s';

-- A UUID of version 7: a v4 (random) one with its first 48 bits replaced by the time in
-- milliseconds, and its version nibble set from 4 (0100) to 7 (0111). set_bit numbers the
-- bits of each byte from its least significant one: byte 6's high nibble is bits 52-55.
-- Executable by PUBLIC, as functions made after 0015 are: it reads nothing, and the worker's
-- role inserts notifications.
create function time_ordered_uuid() returns uuid
language sql
volatile
parallel safe
as $$
    select encode(
        set_bit(
            set_bit(
                overlay(uuid_send(gen_random_uuid())
                        placing substring(int8send(floor(extract(epoch from clock_timestamp())
                                                         * 1000)::bigint) from 3)
                        from 1 for 6),
                52, 1),
            53, 1),
        'hex')::uuid
$$;

alter table outbox alter column event_id set default time_ordered_uuid();
alter table notifications alter column id set default time_ordered_uuid();
