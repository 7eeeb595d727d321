-- complete_jobs_fenced finds the jobs it completes through the primary key, whatever size
-- the jobs table had when the function's statement was planned. PL/pgSQL keeps a generic
-- plan per connection; one made while `jobs` was a page or two (a new database, a table
-- just truncated, statistics not yet taken) reads `id = any(...)` by scanning the whole
-- table, and the connection kept that plan while the table grew: every completion read
-- every job, done ones included (in the bench, 1,227 scans of ~600 rows in 8 s). Nothing
-- in the function is better read whole, so sequential scans are off inside it (Postgres
-- still uses one if no other way exists).
alter function complete_jobs_fenced(bigint[], integer[], text) set enable_seqscan = off;
