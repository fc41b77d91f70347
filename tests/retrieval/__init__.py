"""Tests of sbir.retrieval."""
