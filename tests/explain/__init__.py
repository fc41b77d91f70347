"""Tests of sbir.explain."""
