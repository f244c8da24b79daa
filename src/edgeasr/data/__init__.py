"""Data: corpora (synthetic, LibriSpeech, folder, manifests), cleaning, features, tokenizer, DataModule.

Kept import-free: synthesis workers import this package and must not pay for torch/lhotse.
"""

#: Splits used for evaluation; ``train`` is labeled, ``unlabeled`` is audio only.
EVAL_SPLITS = ("dev", "test", "test_noisy", "test_rare")
ALL_SPLITS = ("train", "unlabeled") + EVAL_SPLITS
#: End-pointing splits (embedded corpus only): trailing silence, hesitations inside some requests and
#: the true end of speech per utterance (supervision custom ``speech_end``, ``hesitation``). Written
#: apart from the manifests training reads (``data/prepare/endpoint/``), without features.
PAUSE_SPLITS = ("dev_pause", "test_pause")
#: Contextual-biasing dev split (embedded corpus only): rare-entity requests with context lists like
#: ``test_rare``, spoken by dev voices, to choose the biasing weights on (``data/prepare/biasing/``,
#: without features).
BIASING_SPLITS = ("dev_rare",)
