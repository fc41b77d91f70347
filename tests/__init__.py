"""The test suite, one folder per package of ``sbir`` (and ``stages`` for the DVC stages of ``pipeline``)."""
