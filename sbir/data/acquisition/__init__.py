"""Getting a dataset's raw files: downloads with resume and md5 checks, safe archive extraction, local copies."""
