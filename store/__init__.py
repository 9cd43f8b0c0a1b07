"""The PostgreSQL adapter: connection pool, capability detection and schema migrations.

The one module through which analytics, ingest and the API reach the database.
"""
