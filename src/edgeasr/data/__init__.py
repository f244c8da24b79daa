"""Data: corpora (synthetic, LibriSpeech, folder, manifests), cleaning, features, tokenizer, DataModule."""

from .features import KaldiFbank, KaldiFbankConfig, frames_after_subsampling  # noqa: F401  (registers the extractor)
from .tokenizer import BLANK_ID, Tokenizer  # noqa: F401

#: Splits used for training (labeled) and for evaluation; ``unlabeled`` is audio only.
EVAL_SPLITS = ("dev", "test", "test_noisy", "test_rare")
ALL_SPLITS = ("train", "unlabeled") + EVAL_SPLITS
