-- Least privilege per process. scripts/db-roles creates an owner role (owns the schema, runs
-- migrations) and one role for the API and one for the worker, and records their names in
-- the database's settings (`reviews.api_role`, `reviews.worker_role`). Each app role gets, table
-- by table, what its process does and nothing more; `grant_app_privileges()` (below) applies
-- that, and both migrators call it after every run, so the grants follow the schema whatever
-- order db-roles and migrations run in. No app role may ever write `schema_migrations`; the
-- API has no write on the outbox and no read of webhook secrets.
--
-- The outbox trigger runs as its owner (SECURITY DEFINER, with a fixed search_path so a
-- caller's objects cannot stand in for ours): a writer of reviews needs no privilege on
-- `outbox` or `outbox_pending`. Replaying a dead letter is a function of the owner's too, so
-- the API's replayDeadJob needs no write on `jobs`.

alter function tg_reviews__write_outbox() security definer set search_path = public, pg_temp;
alter function replay_dead_job(bigint) security definer set search_path = public, pg_temp;
alter function merge_into_waiting_twin(bigint, text, text) set search_path = public, pg_temp;

-- (Re)grants each app role named in the database's settings what its process does, and
-- revokes the rest. Roles that do not exist (db-roles not run) are skipped.
create function grant_app_privileges() returns text
language plpgsql as $$
declare
    v_api name := nullif(current_setting('reviews.api_role', true), '');
    v_worker name := nullif(current_setting('reviews.worker_role', true), '');
    v_role name;
    v_done text[] := '{}';
begin
    foreach v_role in array array_remove(array[v_api, v_worker], null) loop
        continue when not exists (select 1 from pg_roles where rolname = v_role);
        execute format('revoke all on all tables in schema public from %I', v_role);
        execute format('revoke all on all sequences in schema public from %I', v_role);
        execute format('revoke all on all functions in schema public from %I', v_role);
        execute format('grant usage on schema public to %I', v_role);
        v_done := v_done || v_role::text;
    end loop;

    if v_api = any (v_done) then
        execute format($g$
            grant select, insert on products to %1$I;
            grant select, insert, update, delete on reviews to %1$I;
            grant select on outbox, product_ratings, notifications, dead_jobs, retry_policies,
                            webhook_deliveries to %1$I;
            grant update (max_attempts, base_delay_ms, multiplier, max_delay_ms, jitter, updated_at)
                on retry_policies to %1$I;
            grant select (id, url, event_types, description, paused, disabled_at, disabled_reason,
                          created_at, updated_at, previous_secret_expires_at) on webhooks to %1$I;
            grant insert (url, event_types, description, secret) on webhooks to %1$I;
            grant update (url, event_types, description, paused, secret, previous_secret,
                          previous_secret_expires_at, disabled_at, disabled_reason, updated_at)
                on webhooks to %1$I;
            grant delete on webhooks to %1$I;
            grant execute on function replay_dead_job(bigint), tg_reviews__write_outbox()
                to %1$I;
            $g$, v_api);
    end if;

    if v_worker = any (v_done) then
        execute format($g$
            grant select on products, reviews, outbox, webhooks to %1$I;
            grant select, update, delete on outbox_pending to %1$I;
            grant select, insert, update on jobs, product_ratings to %1$I;
            grant select, insert on dead_jobs, notifications, webhook_deliveries to %1$I;
            grant select, insert on retry_policies to %1$I;
            grant update (disabled_at, disabled_reason, updated_at) on webhooks to %1$I;
            grant usage on all sequences in schema public to %1$I;
            grant execute on function recompute_product_rating(uuid), hand_back_job(bigint, integer),
                merge_into_waiting_twin(bigint, text, text), replay_dead_job(bigint),
                lock_key_relay_asleep(), lock_key_rating_recompute()
                to %1$I;
            $g$, v_worker);
    end if;
    return coalesce(nullif(array_to_string(v_done, ', '), ''), 'no app roles');
end;
$$;

-- Functions are executable by PUBLIC unless revoked: the app roles get what they call.
revoke execute on all functions in schema public from public;

select grant_app_privileges();
