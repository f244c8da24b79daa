"""Synthetic voice-assistant corpus spoken by eSpeak NG, plus RIR and noise pools."""

from .corpus import iter_split_specs, split_voices, synthesize_corpus
from .noise import make_noise_pool, make_rir_pool
from .normalize import normalize_text

__all__ = [
    "iter_split_specs",
    "make_noise_pool",
    "make_rir_pool",
    "normalize_text",
    "split_voices",
    "synthesize_corpus",
]
