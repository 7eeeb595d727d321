-- apply_rating_jobs finds each product of a batch through the primary key, whatever size the
-- products table had when its statements were planned. Like complete_jobs_fenced (0021), it
-- keeps a generic plan per connection (plan_cache_mode = force_generic_plan), made at the
-- first call: made while `products` was a page (a new database), the plan joins the batch's
-- products by reading the table whole, and the connection keeps it as the table grows until
-- the table is next analyzed (a minute behind a bulk import of products with autovacuum on,
-- never with it off): every rating batch read every product. Nothing in the function (nor
-- in recompute_product_rating, which it calls) is better read whole, so sequential scans are
-- off inside it (Postgres still uses one if no other way exists).
alter function apply_rating_jobs(bigint[], integer[], jsonb[], text) set enable_seqscan = off;
