"""Lightning DataModule over the prepare stage's manifests.

Batches are formed by lhotse's ``DynamicBucketingSampler``: cuts of similar duration are grouped
and each batch holds up to ``max_duration`` seconds of audio, so padding (and the RNN-T joiner's
frames x tokens cost) stays small.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
from lhotse import CutSet
from lhotse.dataset.collation import collate_features
from lhotse.dataset.sampling import DynamicBucketingSampler, SimpleCutSampler
from torch.utils.data import DataLoader, Dataset

from .tokenizer import Tokenizer


class AsrDataset(Dataset):
    """Maps a lhotse sampler's CutSet to a batch dict.

    Returns:
        features: ``(N, T, F)`` float32, zero-padded
        feature_lens: ``(N,)`` int64
        tokens: list of N token-id lists (empty for unlabeled cuts)
        texts: list of N transcripts (``None`` for unlabeled cuts)
        cut_ids: list of N cut ids
    """

    def __init__(self, tokenizer: Tokenizer | None = None):
        self.tokenizer = tokenizer

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = cuts.sort_by_duration(ascending=False)
        feats, lens = collate_features(cuts)
        texts = [c.supervisions[0].text if c.supervisions else None for c in cuts]
        tokens = [self.tokenizer.encode(t) if (t and self.tokenizer) else [] for t in texts]
        return {"features": feats, "feature_lens": lens.long(), "tokens": tokens, "texts": texts,
                "cut_ids": [c.id for c in cuts]}


class AsrDataModule(pl.LightningDataModule):
    """Train/val/test loaders from ``<manifest_dir>/cuts_<split>.jsonl.gz``.

    Args:
        manifest_dir: the prepare stage's ``manifests/`` folder.
        tokenizer_path: ``bpe.model``.
        train_splits: concatenated for training (``train`` plus ``train_aug`` by default).
        max_duration: seconds of audio per batch.
    """

    def __init__(self, manifest_dir: str | Path, tokenizer_path: str | Path,
                 train_splits: Sequence[str] = ("train", "train_aug"), val_split: str = "dev",
                 max_duration: float = 40.0, num_buckets: int = 10, num_workers: int = 0, seed: int = 1234):
        super().__init__()
        self.manifest_dir = Path(manifest_dir)
        self.tokenizer = Tokenizer(tokenizer_path)
        self.train_splits, self.val_split = list(train_splits), val_split
        self.max_duration, self.num_buckets = max_duration, num_buckets
        self.num_workers, self.seed = num_workers, seed

    def cuts(self, split: str) -> CutSet:
        path = self.manifest_dir / f"cuts_{split}.jsonl.gz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the prepare stage (`dvc repro prepare`)")
        return CutSet.from_file(path)

    def _loader(self, cuts: CutSet, train: bool) -> DataLoader:
        # Lightning calls sampler.set_epoch, so lhotse reshuffles every epoch.
        if train:
            # Eager CutSets on purpose: our corpora fit in memory and an eager set shuffles fully.
            warnings.filterwarnings("ignore", message="You are using DynamicBucketingSampler with an eagerly read CutSet")
            sampler = DynamicBucketingSampler(cuts, max_duration=self.max_duration, shuffle=True,
                                              num_buckets=self.num_buckets, seed=self.seed, drop_last=False)
        else:
            sampler = SimpleCutSampler(cuts, max_duration=self.max_duration, shuffle=False)
        return DataLoader(AsrDataset(self.tokenizer), sampler=sampler, batch_size=None,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        present = [s for s in self.train_splits if (self.manifest_dir / f"cuts_{s}.jsonl.gz").is_file()]
        cuts = CutSet.from_cuts(c for s in present for c in self.cuts(s))
        return self._loader(cuts, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.cuts(self.val_split), train=False)

    def split_dataloader(self, split: str) -> DataLoader:
        return self._loader(self.cuts(split), train=False)

