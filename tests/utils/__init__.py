"""Tests of sbir.utils."""
