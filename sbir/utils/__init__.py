"""The ground layer: atomic writes and output safety (``atomic``), hashing, devices, figures — one of each."""
