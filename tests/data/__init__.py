"""Tests of sbir.data."""
