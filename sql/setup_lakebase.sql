-- Lakebase (Postgres) setup for Direct Write Bench deployed as a Databricks App (docs/deploy.md).
--
-- Gives the app's service principal a Postgres role that logs in with an OAuth token, and the
-- privileges the Lakebase writer needs on the products table.
--
-- Before this file, create the table with sql/products_postgres.sql in the same database.
-- Run both connected to that database as a Databricks identity (OAuth token as password, not a
-- native Postgres password role) that may create roles and grant on the table, for example the
-- instance owner:
--   databricks psql <instance-name> -- -d <database> -f sql/products_postgres.sql
--   app_service_principal=<client-id> lakebase_database=<database> \
--     envsubst '${app_service_principal} ${lakebase_database}' < sql/setup_lakebase.sql \
--     | databricks psql <instance-name> -- -d <database> -v ON_ERROR_STOP=1
-- or paste the rendered file into the Lakebase SQL editor.
--
-- Placeholders:
--   ${app_service_principal}   the app's service principal: its application (client) ID, a UUID
--                              (`databricks apps get <app-name>`, service_principal_client_id).
--                              The Postgres role has this name; PGUSER in the app is the same.
--   ${lakebase_database}       the database (bundle variable `lakebase_database`,
--                              default databricks_postgres)
--
-- The table is public.products, the default of LAKEBASE_TABLE. If you change LAKEBASE_TABLE,
-- change the schema and table below to match.
--
-- Every statement is idempotent; running the file again is harmless.

-- The extension that maps Databricks identities to Postgres roles; one per database.
CREATE EXTENSION IF NOT EXISTS databricks_auth;

-- The app's `database` resource already creates this role (and grants CONNECT and CREATE on the
-- database) when the app is deployed; creating it here covers a setup without that resource.
-- databricks_create_role fails for an existing role, hence the check.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '${app_service_principal}') THEN
    PERFORM databricks_create_role('${app_service_principal}', 'SERVICE_PRINCIPAL');
  END IF;
END
$$;

GRANT CONNECT ON DATABASE ${lakebase_database} TO "${app_service_principal}";
GRANT USAGE ON SCHEMA public TO "${app_service_principal}";

-- COPY ... FROM STDIN and INSERT need INSERT; reading rows back (visibility checks) needs SELECT.
GRANT SELECT, INSERT ON TABLE public.products TO "${app_service_principal}";

-- The serving path (Data Diners): the app creates the real-time table public.fleet_live,
-- its notify function and trigger (it owns them, and grants the real-time job's role what
-- its writes need: PIPELINE_REALTIME_JOB_ROLE).
GRANT CREATE ON SCHEMA public TO "${app_service_principal}";
