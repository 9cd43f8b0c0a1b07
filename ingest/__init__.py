"""Ingest: validate gateway batches, store every reading exactly once, acknowledge after commit."""
