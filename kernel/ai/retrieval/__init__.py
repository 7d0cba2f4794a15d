"""Retrieval for the AI proxy: documents split into chunks, embedded with the tenant's key and
stored in pgvector under the same row-level security as every tenant table; nearest-chunk search
and retrieval-augmented chat build on it."""
