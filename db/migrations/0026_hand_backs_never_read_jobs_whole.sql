-- Sequential scans are off inside hand_back_job and merge_into_waiting_twin, as 0021 turned
-- them off inside complete_jobs_fenced. Both look jobs up by key (the job, and its waiting
-- twin through the coalescing index), but a worker's session plans generically and keeps a
-- function's plans: made while `jobs` was a page, each lookup read the whole table at every
-- later call (four sequential scans, 80,012 rows, for one hand-back among 20,000 jobs) until
-- the table was next analyzed. A deferred job (a webhook to a busy endpoint, every 500 ms),
-- a relay's refused hand-off, a shutdown and an operator's replay all run them.
-- Binaries of any version run beside it.
alter function hand_back_job(bigint, int) set enable_seqscan = off;
alter function merge_into_waiting_twin(bigint, text, text) set enable_seqscan = off;
