-- A small demo catalogue for scripts/dev: three products owned by `demo-owner`, a few reviews.
-- Inserts only when the catalogue is empty, so running scripts/dev twice adds nothing.
insert into products (id, name, owner_id)
select v.id::uuid, v.name, 'demo-owner'
from (values ('00000000-0000-4000-8000-000000000001', 'Espresso machine'),
             ('00000000-0000-4000-8000-000000000002', 'Noise-cancelling headphones'),
             ('00000000-0000-4000-8000-000000000003', 'Trail running shoes')) as v (id, name)
where not exists (select 1 from products);

insert into reviews (product_id, author_id, rating, title, body)
select v.product_id::uuid, v.author_id, v.rating, v.title, v.body
from (values ('00000000-0000-4000-8000-000000000001', 'demo-alice', 5, 'Café quality', 'Crema every time.'),
             ('00000000-0000-4000-8000-000000000001', 'demo-bob', 3, 'Loud', 'Good coffee, noisy pump.'),
             ('00000000-0000-4000-8000-000000000002', 'demo-alice', 4, 'Quiet flights', 'Battery lasts a week.')) as v (product_id, author_id, rating, title, body)
where not exists (select 1 from reviews);
