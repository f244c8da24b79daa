"""Data: corpora (synthetic, LibriSpeech, folder, manifests), cleaning, features, tokenizer, DataModule.

Kept import-free: synthesis workers import this package and must not pay for torch/lhotse.
"""

#: Splits used for evaluation; ``train`` is labeled, ``unlabeled`` is audio only.
EVAL_SPLITS = ("dev", "test", "test_noisy", "test_rare")
ALL_SPLITS = ("train", "unlabeled") + EVAL_SPLITS
