-- The products table, as Zerobus and the SQL writer expect it (Unity Catalog / Delta).
-- Column order and types must match proto/product_record.proto field for field.
CREATE TABLE IF NOT EXISTS main.default.products (
  record_id STRING NOT NULL,
  product_id STRING NOT NULL,
  product_name STRING NOT NULL,
  product_price DOUBLE NOT NULL,
  category STRING NOT NULL,
  sale_start_date DATE,
  sale_stop_date DATE,
  processed_at TIMESTAMP,
  batch_id STRING,
  source STRING,
  description STRING
) USING DELTA
