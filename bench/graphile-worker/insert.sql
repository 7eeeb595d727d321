insert into gw_reviews (product_id, rating, body) values (1 + (random() * 99)::int, 1 + (random() * 4)::int, 'a review body');
