"""Retrieval: embedding shards, the embeddings store, scoring and metrics, evaluation with its figures, and
searching a gallery with a sketch."""
