"""The node's local store: chunks in sparse slab files, an SQLite index, and the
operations on them (ingest, export, materialize, GC, verify)."""
