"""edgeasr: a reproducible pipeline for tiny, accurate, hardware-ready on-device speech recognizers."""

__version__ = "0.1.0"

#: The stages of the pipeline, in order. One name per stage everywhere: the DVC stage,
#: pipelines/<stage>.py, the config section, the MLflow child run and reports/<stage>.json.
STAGES = ("prepare", "train_teacher", "distill", "compress", "mwer", "export", "train_lm", "reference", "evaluate")
