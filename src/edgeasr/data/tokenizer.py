"""SentencePiece BPE tokenizer with the blank at id 0.

The blank id is shared by the tokenizer, the RNN-T loss, decoding and export; sherpa-onnx's
``tokens.txt`` contract wants blank = 0, so ``<blk>`` is a user-defined symbol placed first.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

BLANK = "<blk>"
BLANK_ID = 0
UNK_ID = 1


def train_tokenizer(
    texts: Iterable[str], model_dir: Path, vocab_size: int = 256, model_type: str = "bpe",
    character_coverage: float = 1.0,
) -> Path:
    """Train on ``texts`` (train split only) and write ``bpe.model`` and ``tokens.txt`` to ``model_dir``.

    ``vocab_size`` is a soft limit: a small corpus cannot support 256 pieces, and failing the whole
    pipeline over that helps nobody; the real size is in ``tokens.txt`` and the prepare report.
    """
    model_dir.mkdir(parents=True, exist_ok=True)
    corpus = model_dir / "train_text.txt"
    lines = [t for t in texts if t]
    if not lines:
        raise ValueError("cannot train a tokenizer: the train split has no transcripts left after filtering")
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = model_dir / "bpe"
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        user_defined_symbols=[BLANK],
        unk_id=UNK_ID,
        bos_id=-1,
        eos_id=-1,
        hard_vocab_limit=False,
        input_sentence_size=10_000_000,
        shuffle_input_sentence=False,  # deterministic
        num_threads=1,
        minloglevel=2,
    )
    corpus.unlink()
    tok = Tokenizer(prefix.with_suffix(".model"))
    tok.write_tokens_txt(model_dir / "tokens.txt")
    return prefix.with_suffix(".model")


class Tokenizer:
    """Thin wrapper over a SentencePiece model: ``encode(text) -> ids``, ``decode(ids) -> text``."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model {path} not found; run the prepare stage (`dvc repro prepare`)")
        self.path = path
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        if self.sp.id_to_piece(BLANK_ID) != BLANK:
            raise ValueError(f"{path}: id {BLANK_ID} is {self.sp.id_to_piece(BLANK_ID)!r}, expected {BLANK!r}")
        self.blank_id = BLANK_ID
        self.unk_id = self.sp.unk_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_dropout(self, text: str, p: float, key: tuple) -> list[int]:
        """``text`` segmented with BPE-dropout ``p`` (SentencePiece's sampling); the same ``key``
        gives the same pieces (SentencePiece's generator is reseeded from it)."""
        spm.set_random_generator_seed(zlib.crc32(repr(key).encode()))
        return self.sp.encode(text, out_type=int, enable_sampling=True, alpha=p, nbest_size=-1)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i != self.blank_id])

    def can_represent(self, text: str) -> bool:
        return self.unk_id not in self.encode(text)

    def write_tokens_txt(self, path: Path) -> None:
        """sherpa-onnx's ``tokens.txt``: ``symbol id`` per line."""
        with open(path, "w", encoding="utf-8") as f:
            for i in range(self.vocab_size):
                f.write(f"{self.sp.id_to_piece(i)} {i}\n")
