"""Sources of the serving path's bundle jobs (databricks.yml): run on a workspace's cluster."""
