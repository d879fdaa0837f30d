-- The products table in Postgres (Lakebase, or the local stack's embedded server).
-- Same columns, order and nullability as sql/products_table.sql and proto/product_record.proto.
-- The Lakebase writer runs this file when the table is missing, with public.products and
-- products_batch_id_idx replaced by the configured table and its index name; keep both
-- names spelled exactly so, and keep this file free of curly braces.
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
