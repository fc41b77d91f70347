"""The app's DVC integration, outside the library: the DVCLive training logger (:mod:`sbir_dvc.live`)."""
