"""Tests of sbir.cli."""
