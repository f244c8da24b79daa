"""One module per DVC stage; each exposes ``run(cfg)`` called by ``pipelines/<stage>.py``."""
