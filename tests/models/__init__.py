"""Tests of sbir.models."""
