-- The reviews table of bench/graphile-worker/run.sh, and the trigger that adds a job per insert
-- with its transaction's start.
create table gw_reviews (id bigserial primary key, product_id int not null, rating int not null, body text not null);
create or replace function gw_reviews_job() returns trigger language plpgsql as $$
begin
  perform graphile_worker.add_job('review_created',
    json_build_object('id', new.id, 'tx_start', extract(epoch from now())));
  return new;
end $$;
create trigger gw_reviews_job after insert on gw_reviews for each row execute function gw_reviews_job();
