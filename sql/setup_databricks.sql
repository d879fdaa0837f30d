-- Unity Catalog setup for Direct Write Bench deployed as a Databricks App (docs/deploy.md).
--
-- Creates the products table that the Zerobus and SQL writers write to, and grants the app's
-- service principal what both writers need on it.
--
-- Placeholders, to be replaced before running, for example with
--   catalog=main schema=dwbench table=products app_service_principal=<client-id> \
--     envsubst '${catalog} ${schema} ${table} ${app_service_principal}' \
--     < sql/setup_databricks.sql
--
--   ${catalog}                 catalog of the table      (bundle variable `catalog`, default main)
--   ${schema}                  schema of the table       (bundle variable `schema`, default dwbench)
--   ${table}                   name of the table         (bundle variable `table`, default products)
--   ${app_service_principal}   the app's service principal: its application (client) ID, a UUID,
--                              shown by `databricks apps get <app-name>` as
--                              service_principal_client_id
--
-- Run it in the SQL editor on a SQL warehouse, as an identity that may create the catalog and
-- schema (or already owns them) and that can grant on them (owner or MANAGE).
--
-- Part 1 runs before the first `databricks bundle deploy`: the app's table resource refers to
-- the table, which must exist by then. Part 2 runs after it: the service principal exists only
-- once the app does. Every statement is idempotent; running the whole file again is harmless.
--
-- Zerobus Ingest writes only to managed Delta tables whose names use ASCII letters, digits and
-- underscores, not to tables on the workspace's default storage, and it does not support a
-- table that is dropped and created again under the same name: use a new name instead.


-- Part 1: catalog, schema and table ---------------------------------------------------------

-- Where the metastore has no storage root, add MANAGED LOCATION 's3://...' (or abfss://...,
-- gs://...) to CREATE CATALOG so the table is not placed on default storage.
CREATE CATALOG IF NOT EXISTS ${catalog};

CREATE SCHEMA IF NOT EXISTS ${catalog}.${schema};

-- Same columns, order, types and nullability as sql/products_table.sql and
-- proto/product_record.proto (NOT NULL columns are the proto's required fields). Zerobus checks
-- records against the table 1:1, so change all three together or none.
CREATE TABLE IF NOT EXISTS ${catalog}.${schema}.${table} (
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
COMMENT 'Direct Write Bench products workload (Zerobus Ingest and SQL warehouse writers)';


-- Part 2: grants for the app's service principal ---------------------------------------------

-- The app's `products-table` resource (MODIFY) grants the first three already when the
-- deploying identity may grant them; stating them here makes the setup independent of that.
-- Zerobus Ingest requires SELECT as well as MODIFY on the table. The SQL warehouse's CAN_USE
-- comes from the app's `sql-warehouse` resource, not from SQL.
GRANT USE CATALOG ON CATALOG ${catalog} TO `${app_service_principal}`;
GRANT USE SCHEMA ON SCHEMA ${catalog}.${schema} TO `${app_service_principal}`;
GRANT MODIFY, SELECT ON TABLE ${catalog}.${schema}.${table} TO `${app_service_principal}`;
