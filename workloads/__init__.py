"""Workloads: table schemas, the single source of every schema form, and their data."""
