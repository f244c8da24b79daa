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
import torch.distributed as dist
from lhotse import CutSet
from lhotse.dataset.collation import collate_features
from lhotse.dataset.sampling import DynamicBucketingSampler, SimpleCutSampler, ZipSampler
from torch.utils.data import DataLoader, Dataset

from edgeasr.training.distill import collate_targets

from .tokenizer import Tokenizer
from .word_classes import check_word_classes


class AsrDataset(Dataset):
    """Maps a lhotse sampler's CutSet to a batch dict.

    Returns:
        features: ``(N, T, F)`` float32, zero-padded
        feature_lens: ``(N,)`` int64
        tokens: list of N token-id lists (empty for unlabeled cuts; a pseudo-labeled cut carries
            its teacher's ids in ``supervision.custom["tokens"]``)
        texts: list of N transcripts (``None`` for unlabeled cuts)
        cut_ids: list of N cut ids
        word_classes: list of N strings with one ``"s"`` (slot) / ``"c"`` (carrier) per word of the
            transcript (synthetic corpus, :mod:`edgeasr.data.word_classes`), ``None`` for a cut
            without them (real corpora, unlabeled or pseudo-labeled cuts)
        teacher_logp, teacher_lens: only with ``targets`` (distillation): see
            :func:`edgeasr.training.distill.collate_targets`

    BPE-dropout (Provilkov et al. 2020; for low-resource ASR: Laptev et al. 2020): with
    ``bpe_dropout`` > 0 each transcript is segmented with every BPE merge skipped with that
    probability, so the model meets words spelled by smaller pieces too and learns to compose a
    spelling it never heard whole. The segmentation is a function of (seed, epoch, cut id): a
    resumed run sees the same pieces.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, targets=None, bpe_dropout: float = 0.0, seed: int = 0):
        if not 0.0 <= bpe_dropout < 1.0:
            raise ValueError(f"bpe_dropout must be in [0, 1), got {bpe_dropout}")
        if bpe_dropout and targets is not None:
            raise ValueError("bpe_dropout with teacher targets: the targets are laid out over the teacher's "
                             "segmentation; set bpe_dropout=0 for distillation")
        self.tokenizer = tokenizer
        self.targets = targets
        self.bpe_dropout, self.seed, self.epoch = float(bpe_dropout), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _tokens(self, cut) -> list[int]:
        sup = cut.supervisions[0] if cut.supervisions else None
        if sup is None:
            return []
        if sup.custom and "tokens" in sup.custom:
            return [int(t) for t in sup.custom["tokens"]]
        if not (sup.text and self.tokenizer):
            return []
        if self.bpe_dropout:
            return self.tokenizer.encode_dropout(sup.text, self.bpe_dropout, (self.seed, self.epoch, cut.id))
        return self.tokenizer.encode(sup.text)

    @staticmethod
    def _word_classes(cut) -> str | None:
        sup = cut.supervisions[0] if cut.supervisions else None
        if sup is None or not sup.custom:
            return None
        return check_word_classes(sup.text, sup.custom.get("word_classes"))

    def __getitem__(self, cuts: CutSet) -> dict:
        cuts = cuts.sort_by_duration(ascending=False)
        feats, lens = collate_features(cuts)
        batch = {"features": feats, "feature_lens": lens.long(), "tokens": [self._tokens(c) for c in cuts],
                 "texts": [c.supervisions[0].text if c.supervisions else None for c in cuts],
                 "cut_ids": [c.id for c in cuts], "word_classes": [self._word_classes(c) for c in cuts]}
        if self.targets is not None:
            batch["teacher_logp"], batch["teacher_lens"] = collate_targets(self.targets, batch["cut_ids"])
        return batch


class CurriculumSampler:
    """The first ``epochs`` epochs over an easier set of cuts, then the full training set.

    SortaGrad (Amodei et al. 2016, Deep Speech 2): early epochs over short utterances in order of
    increasing duration let a CTC/RNN-T model find its alignments before it meets long ones. The
    phase follows the epoch Lightning passes to :meth:`set_epoch`, so a resumed run picks the same
    phase. Yields lhotse CutSets like the samplers it wraps.
    """

    def __init__(self, easy, full, epochs: int = 1):
        self.easy, self.full, self.epochs = easy, full, int(epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.easy.set_epoch(epoch)
        self.full.set_epoch(epoch)

    def __iter__(self):
        return iter(self.easy if self.epoch < self.epochs else self.full)


class ResumableSampler:
    """A training sampler that a resumed run fast-forwards to where its checkpoint left it.

    Lightning restores the step, not the data position: resumed mid-epoch, it would start the
    epoch's batches over, so the resumed run would train on other batches than an uninterrupted
    one. ``consumed`` counts the batches of the current epoch that training took (counted by
    :meth:`AsrDataModule.on_before_batch_transfer`, not here: the DataLoader fetches a batch
    ahead); after :meth:`load_state_dict` the next pass is the same epoch's order with that many
    batches skipped. lhotse samplers are deterministic given seed and epoch, so skipping is exact.
    """

    def __init__(self, sampler, dataset=None):
        self.sampler, self.dataset = sampler, dataset  # the dataset hears the epoch too (BPE-dropout)
        self.epoch, self.consumed, self._skip = 0, 0, 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.epoch, self.consumed, self._skip = int(epoch), 0, 0
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        # the epoch too: Lightning's first fetch of a resumed run comes before its set_epoch
        self.set_epoch(int(state["epoch"]))
        self.consumed = self._skip = int(state["consumed"])

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self.consumed = skip
        for i, batch in enumerate(self.sampler):
            if i >= skip:
                yield batch


class AsrDataModule(pl.LightningDataModule):
    """Train/val/test loaders from ``<manifest_dir>/cuts_<split>.jsonl.gz``.

    Args:
        manifest_dir: the prepare stage's ``manifests/`` folder.
        tokenizer_path: ``bpe.model``.
        train_splits: concatenated for training (``train`` plus ``train_aug`` by default).
        max_duration: seconds of audio per batch.
        curriculum: ``{epochs, splits, max_cut_duration, sorted}`` or None: the first ``epochs``
            epochs train on ``splits`` (default: the train splits) limited to cuts of at most
            ``max_cut_duration`` seconds, in order of increasing duration when ``sorted``
            (:class:`CurriculumSampler`).
        bpe_dropout: merge-dropout probability for the training transcripts (:class:`AsrDataset`).
    """

    def __init__(self, manifest_dir: str | Path, tokenizer_path: str | Path,
                 train_splits: Sequence[str] = ("train", "train_aug"), val_split: str = "dev",
                 max_duration: float = 40.0, num_buckets: int = 10, num_workers: int = 0, seed: int = 1234,
                 curriculum: dict | None = None, bpe_dropout: float = 0.0):
        super().__init__()
        self.manifest_dir = Path(manifest_dir)
        self.tokenizer = Tokenizer(tokenizer_path)
        self.train_splits, self.val_split = list(train_splits), val_split
        self.max_duration, self.num_buckets = max_duration, num_buckets
        self.num_workers, self.seed = num_workers, seed
        self.curriculum = dict(curriculum) if curriculum else None
        self.bpe_dropout = float(bpe_dropout)
        self._train_sampler: ResumableSampler | None = None
        self._sampler_state: dict | None = None  # from a checkpoint, for the next train_dataloader()

    def state_dict(self) -> dict:
        """Saved in Lightning checkpoints: where in which epoch the training batches are."""
        return {"train_sampler": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        self._sampler_state = state.get("train_sampler")
        if self._train_sampler is not None and self._sampler_state is not None:
            self._train_sampler.load_state_dict(self._sampler_state)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training and self._train_sampler is not None:
            self._train_sampler.consumed += 1
        return batch

    def cuts(self, split: str) -> CutSet:
        path = self.manifest_dir / f"cuts_{split}.jsonl.gz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the prepare stage (`dvc repro prepare`)")
        return CutSet.from_file(path)

    def _bucketing(self, cuts: CutSet, max_duration: float):
        # lhotse needs at least as many cuts as buckets (e.g. a few kept pseudo-labels): use fewer
        # buckets, or a plain shuffled sampler below two.
        buckets = min(self.num_buckets, len(cuts))
        if buckets < 2:
            return SimpleCutSampler(cuts, max_duration=max_duration, shuffle=True, seed=self.seed)
        # Eager CutSets on purpose: our corpora fit in memory and an eager set shuffles fully.
        warnings.filterwarnings("ignore", message="You are using DynamicBucketingSampler with an eagerly read CutSet")
        return DynamicBucketingSampler(cuts, max_duration=max_duration, shuffle=True, num_buckets=buckets,
                                       seed=self.seed, drop_last=False)

    def _loader(self, cuts: CutSet, train: bool, sampler=None, dataset: AsrDataset | None = None) -> DataLoader:
        # Lightning calls sampler.set_epoch, so lhotse reshuffles every epoch.
        if sampler is None:
            sampler = (self._bucketing(cuts, self.max_duration) if train
                       else SimpleCutSampler(cuts, max_duration=self.max_duration, shuffle=False))
        if train:
            dataset = dataset or AsrDataset(self.tokenizer, bpe_dropout=self.bpe_dropout, seed=self.seed)
            sampler = self._train_sampler = ResumableSampler(sampler, dataset)
            if self._sampler_state is not None:
                sampler.load_state_dict(self._sampler_state)
                self._sampler_state = None
        return DataLoader(dataset or AsrDataset(self.tokenizer), sampler=sampler, batch_size=None,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_cuts(self, splits: Sequence[str] | None = None) -> CutSet:
        present = [s for s in (splits or self.train_splits) if (self.manifest_dir / f"cuts_{s}.jsonl.gz").is_file()]
        return CutSet.from_cuts(c for s in present for c in self.cuts(s))

    def train_sampler(self, cuts: CutSet, max_duration: float):
        """The bucketing sampler over ``cuts``, behind the curriculum when one is configured."""
        full = self._bucketing(cuts, max_duration)
        c = self.curriculum
        if not c or int(c.get("epochs", 0)) <= 0:
            return full
        unknown = set(c) - {"epochs", "splits", "max_cut_duration", "sorted"}
        if unknown:
            raise ValueError(f"unknown curriculum keys {sorted(unknown)}; allowed: epochs, splits, max_cut_duration, sorted")
        # the training cuts already loaded serve unless the curriculum names other splits
        same = not c.get("splits") or list(c["splits"]) == self.train_splits
        easy = cuts if same else self.train_cuts(c["splits"])
        if c.get("max_cut_duration"):
            easy = easy.filter(lambda cut: cut.duration <= float(c["max_cut_duration"])).to_eager()
        if not len(easy):
            raise ValueError(f"the curriculum {c} leaves no training cuts")
        easy_sampler = (SimpleCutSampler(easy.sort_by_duration(ascending=True), max_duration=max_duration, shuffle=False)
                        if c.get("sorted", True) else self._bucketing(easy, max_duration))
        return CurriculumSampler(easy_sampler, full, int(c["epochs"]))

    def train_dataloader(self) -> DataLoader:
        return self._loader(None, train=True, sampler=self.train_sampler(self.train_cuts(), self.max_duration))

    def val_dataloader(self) -> DataLoader:
        # Under DDP each rank validates every world_size-th cut and the metrics sum errors, words and
        # losses over ranks: exact. (lhotse's own sharding would repeat cuts to even the last round.)
        cuts = self.cuts(self.val_split)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            cuts = CutSet.from_cuts(list(cuts)[dist.get_rank()::dist.get_world_size()])
        return self.cuts_dataloader(cuts)

    def split_dataloader(self, split: str) -> DataLoader:
        """All of ``split`` in order, in whichever process asks (a report, rank zero's too)."""
        return self.cuts_dataloader(self.cuts(split))

    def cuts_dataloader(self, cuts: CutSet, max_duration: float | None = None) -> DataLoader:
        """Ordered, unshuffled batches of any CutSet (inference over it), all of it: never sharded
        by DDP rank as the training and validation samplers are (lhotse reads the process group)."""
        sampler = SimpleCutSampler(cuts, max_duration=max_duration or self.max_duration, shuffle=False,
                                   world_size=1, rank=0)
        return self._loader(cuts, train=False, sampler=sampler)


class DistillDataModule(AsrDataModule):
    """Training batches that mix labeled cuts with pseudo-labeled unlabeled cuts, with teacher targets.

    Each batch holds ``(1 - unlabeled_ratio) * max_duration`` seconds of labeled audio and
    ``unlabeled_ratio * max_duration`` seconds of pseudo-labeled audio (lhotse ``ZipSampler`` over
    two bucketing samplers). ``unlabeled_ratio = 0`` or no pseudo cuts: labeled batches only.

    Args:
        pseudo_cuts: unlabeled cuts whose supervision carries the teacher's text and ``custom["tokens"]``.
        targets: ``{cut_id: (T, U+1, 3)}`` teacher targets, or ``None`` (no distillation).
    """

    def __init__(self, *args, pseudo_cuts: CutSet | None = None, targets=None, unlabeled_ratio: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= unlabeled_ratio < 1.0:
            raise ValueError(f"unlabeled_ratio must be in [0, 1), got {unlabeled_ratio}")
        self.pseudo_cuts, self.targets, self.unlabeled_ratio = pseudo_cuts, targets, float(unlabeled_ratio)

    def train_dataloader(self) -> DataLoader:
        r = self.unlabeled_ratio if self.pseudo_cuts is not None and len(self.pseudo_cuts) else 0.0
        if r and self.curriculum:
            raise ValueError("a curriculum with unlabeled_ratio > 0 is not supported: set unlabeled_ratio=0 "
                             "or remove the curriculum")
        labeled = self.train_sampler(self.train_cuts(), self.max_duration * (1 - r))
        sampler = labeled if r == 0 else ZipSampler(labeled, self._bucketing(self.pseudo_cuts, self.max_duration * r))
        return self._loader(None, train=True, sampler=sampler,
                            dataset=AsrDataset(self.tokenizer, self.targets, self.bpe_dropout, self.seed))

