-- The products table in Postgres (Lakebase, or the local stack's embedded server), for
-- setting Lakebase up by hand (docs/deploy.md). The Lakebase writer does not read this
-- file: it derives the same table from the products workload's schema
-- (TableSchema.postgres_ddl, record_id the primary key, an index on batch_id), and
-- tests/writers/test_lakebase.py checks that both give the same columns, types,
-- nullability and indexes.
CREATE TABLE IF NOT EXISTS public.products (
  record_id text PRIMARY KEY,
  product_id text NOT NULL,
  product_name text NOT NULL,
  product_price double precision NOT NULL,
  category text NOT NULL,
  sale_start_date date,
  sale_stop_date date,
  processed_at timestamptz,
  batch_id text,
  source text,
  description text
);

CREATE INDEX IF NOT EXISTS products_batch_id_idx ON public.products (batch_id);
