-- Deterministic rows: every value is a function of the row number, so every run,
-- every machine and every PostgreSQL version (14+) produces the same database.
-- Sizes come from settings course.n_* set by pgcourse.dataset before this runs.

-- h(i, salt): a stable pseudo-random non-negative integer (hash partitioning keeps
-- hashint8extended stable across versions and platforms).
CREATE FUNCTION pg_temp.h(i bigint, salt bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT
    RETURN hashint8extended(i, salt) & 9223372036854775807;

INSERT INTO customers (id, name, email, country, created_at)
SELECT i,
       f.v || ' ' || l.v,
       lower(f.v) || '.' || lower(l.v) || '.' || i || '@example.com',
       (ARRAY['US','DE','FR','GB','NL','ES','IT','PL','SE','CA'])[1 + pg_temp.h(i, 3) % 10],
       timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => pg_temp.h(i, 4) % (730 * 86400))
FROM generate_series(1, current_setting('course.n_customers')::int) AS i
CROSS JOIN LATERAL (SELECT (ARRAY['Ada','Alan','Barbara','Charles','Donald','Edsger','Frances','Grace',
        'Guido','Hedy','Jean','John','Ken','Linus','Margaret','Niklaus','Radia','Sophie','Tim','Yukihiro'])
        [1 + pg_temp.h(i, 1) % 20] AS v) AS f
CROSS JOIN LATERAL (SELECT (ARRAY['Allen','Backus','Cerf','Dijkstra','Engelbart','Floyd','Goldberg',
        'Hamilton','Hopper','Iverson','Kay','Knuth','Lamport','Liskov','McCarthy','Perlman','Ritchie',
        'Stonebraker','Thompson','Wirth'])[1 + pg_temp.h(i, 2) % 20] AS v) AS l;

-- A product's category follows from its noun: a Kettle is kitchen, a Lamp is home.
INSERT INTO products (id, sku, name, category, price, stock)
SELECT i,
       'SKU-' || lpad(i::text, 5, '0'),
       (ARRAY['Small','Large','Classic','Eco','Pro','Mini','Deluxe','Smart'])[1 + pg_temp.h(i, 11) % 8] || ' '
       || (ARRAY['Kettle','Mug','Blender','Lamp','Chair','Backpack','Umbrella','Notebook','Keyboard',
                 'Headphones'])[n],
       (ARRAY['kitchen','kitchen','kitchen','home','home','travel','travel','office','office','audio'])[n],
       (100 + pg_temp.h(i, 14) % 49900) / 100.0,
       pg_temp.h(i, 15) % 500
FROM generate_series(1, current_setting('course.n_products')::int) AS i
CROSS JOIN LATERAL (SELECT 1 + (pg_temp.h(i, 12) % 10)::int AS n) AS noun;

INSERT INTO orders (id, customer_id, status, created_at)
SELECT i,
       1 + pg_temp.h(i, 21) % current_setting('course.n_customers')::int,
       CASE WHEN pg_temp.h(i, 22) % 20 = 0 THEN 'cancelled'
            WHEN pg_temp.h(i, 22) % 20 < 3 THEN 'pending'
            WHEN pg_temp.h(i, 22) % 20 < 10 THEN 'shipped'
            ELSE 'paid' END,
       timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => pg_temp.h(i, 23) % (365 * 86400))
FROM generate_series(1, current_setting('course.n_orders')::int) AS i;

INSERT INTO order_items (order_id, line_no, product_id, quantity, unit_price)
SELECT o.id, l, p.id, 1 + pg_temp.h(o.id * 8 + l, 32) % 5, p.price
FROM orders AS o
CROSS JOIN LATERAL generate_series(1, 1 + (pg_temp.h(o.id, 30) % 5)::int) AS l
JOIN products AS p ON p.id = 1 + pg_temp.h(o.id * 8 + l, 31) % current_setting('course.n_products')::int;

INSERT INTO accounts (id, customer_id, balance)
SELECT c.id, c.id, (10000 + pg_temp.h(c.id, 41) % 990000) / 100.0
FROM customers AS c;

INSERT INTO events (id, occurred_at, customer_id, kind, payload)
SELECT i,
       timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => i * 30),
       1 + pg_temp.h(i, 51) % current_setting('course.n_customers')::int,
       (ARRAY['page_view','page_view','page_view','search','add_to_cart','checkout','login','logout'])
           [1 + pg_temp.h(i, 52) % 8],
       jsonb_build_object('path', '/products/' || (1 + pg_temp.h(i, 53) % 500),
                          'ms', pg_temp.h(i, 54) % 997,
                          'device', (ARRAY['mobile','desktop','tablet'])[1 + pg_temp.h(i, 55) % 3])
FROM generate_series(1, current_setting('course.n_events')::int) AS i;

-- Identity columns continue after the loaded rows, so lessons can insert without ids.
SELECT setval(pg_get_serial_sequence('customers', 'id'), (SELECT max(id) FROM customers));
SELECT setval(pg_get_serial_sequence('products', 'id'), (SELECT max(id) FROM products));
SELECT setval(pg_get_serial_sequence('orders', 'id'), (SELECT max(id) FROM orders));
SELECT setval(pg_get_serial_sequence('accounts', 'id'), (SELECT max(id) FROM accounts));
SELECT setval(pg_get_serial_sequence('events', 'id'), (SELECT max(id) FROM events));
