"""Logs in: the data contract, lossless ingest into the embedded store, and first statistics."""
