"""Tests of sbir.train."""
