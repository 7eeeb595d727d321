-- The newest migration applied, for the binaries' start-up check: a binary whose embedded
-- migrations are not all applied yet (new binaries started before `reviews-api migrate` or
-- scripts/migrate ran) says so and waits, the worker before it relays or runs anything and
-- the API's /readyz with a 503; beside newer migrations than its own (a newer version
-- migrated, a rolling deploy) it runs. The app roles cannot read schema_migrations: this
-- tells them its newest version and nothing else, so every role may call it.
create function applied_schema_version() returns text
language sql stable security definer
set search_path = public, pg_temp
as $$
    select max(version) from schema_migrations
$$;
grant execute on function applied_schema_version() to public;
