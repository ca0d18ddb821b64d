"""The PostgreSQL backend: the same queue, in a database that several hosts share.

Imported only when a postgresql:// URL is used, so the file backend's start-up does not pay for
the driver (psycopg 3, the `ephq[postgres]` extra).
"""
