-- The grocery price catalog of examples/grocery.yaml: schema and seed data.
CREATE TABLE IF NOT EXISTS inventory (
    item       text PRIMARY KEY,
    price      numeric(10,2) NOT NULL,
    category   text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS store_stock (
    store      text NOT NULL,
    item       text NOT NULL REFERENCES inventory(item),
    qty        integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store, item)
);

INSERT INTO inventory (item, price, category) VALUES
    ('apple', 1.99, 'fruit'),
    ('banana', 0.59, 'fruit'),
    ('cherry', 4.50, 'fruit'),
    ('grape', 3.25, 'fruit'),
    ('lemon', 0.79, 'fruit'),
    ('mango', 1.49, 'fruit'),
    ('orange', 0.99, 'fruit'),
    ('pear', 1.29, 'fruit'),
    ('carrot', 0.89, 'vegetable'),
    ('potato', 0.45, 'vegetable'),
    ('tomato', 2.10, 'vegetable'),
    ('onion', 0.65, 'vegetable'),
    ('spinach', 2.49, 'vegetable'),
    ('milk', 1.15, 'dairy'),
    ('butter', 2.99, 'dairy'),
    ('cheese', 5.75, 'dairy'),
    ('yogurt', 0.95, 'dairy'),
    ('bread', 2.35, 'bakery'),
    ('bagel', 0.85, 'bakery'),
    ('coffee', 7.99, 'pantry'),
    ('rice', 1.89, 'pantry'),
    ('pasta', 1.39, 'pantry')
ON CONFLICT (item) DO NOTHING;

INSERT INTO store_stock (store, item, qty)
SELECT s.store, i.item, 10 + (abs(hashtext(s.store || i.item)) % 90)
FROM (VALUES ('downtown'), ('harbor'), ('airport')) AS s(store)
CROSS JOIN inventory i
ON CONFLICT (store, item) DO NOTHING;
