"""Tests of the DVC stages (the entry points in pipeline/) and of params.yaml and dvc.yaml."""
