"""Training throughput (audio-seconds per wall-second) of the teacher and the student, the
Lightning step against a bare PyTorch loop on the same model and batches (overhead ratio), and
greedy / beam decoding real-time factors.

Needs a prepared corpus (`dvc repro prepare`, or `python pipelines/prepare.py experiment=tiny`).
Usage: python benchmarks/train_throughput.py [--steps 20] [--threads 2] [--models teacher student] [--ddp]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from conf_loader import compose
from omegaconf import OmegaConf

from edgeasr.data.datamodule import AsrDataModule
from edgeasr.decoding import greedy_search, modified_beam_search
from edgeasr.models import build_transducer
from edgeasr.training import TransducerLitModule
from edgeasr.training.callbacks import Throughput


def batches(prep: Path, max_duration: float, n: int):
    dm = AsrDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                       max_duration=max_duration)
    out = []
    for b in dm.train_dataloader():
        out.append(b)
        if len(out) == n:
            break
    return dm, out


def build(cfg_model, vocab: int):
    return build_transducer({**OmegaConf.to_container(cfg_model, resolve=True), "vocab_size": vocab})


def bare_loop(model, data, lr=1e-3, clip=5.0) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr)
    model.train()
    audio, t = 0.0, time.perf_counter()
    for b in data:
        out = model(b["features"], b["feature_lens"], b["tokens"])
        (out["loss"] / out["num_utts"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        audio += float(b["feature_lens"].sum()) * 0.01
    return audio / (time.perf_counter() - t)


def lightning_loop(model, data, decode, devices: int = 1) -> float | None:
    """Lightning on the same batches. ``devices=2``: DDP over two 1-thread CPU processes (forked;
    Lightning's DistributedSampler gives each rank half of the batches, so the same total audio).
    The forked ranks cannot hand callback state back, so rank 0 prints its figure and this returns None."""
    class Report(Throughput):
        def on_train_end(self, trainer, pl_module):
            if devices > 1 and trainer.is_global_zero:
                print(f"{'':8s} lightning DDP x{devices} (1 thread each) {self.audio_s_per_s:6.1f} audio-s/s", flush=True)

    lit = TransducerLitModule(model, decode, {"lr": 1e-3}, {"warmup_steps": 1, "total_steps": len(data)}, None)
    speed = Report()
    steps = len(data) // devices
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp_fork" if devices > 1 else "auto",
                         max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=5.0,
                         callbacks=[speed], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(lit, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None, shuffle=False))
    return speed.audio_s_per_s if devices == 1 else None


@torch.inference_mode()
def decode_rtf(model, data, method: str) -> float:
    model.eval()
    audio, t = 0.0, time.perf_counter()
    for b in data:
        enc, lens = model.encode(b["features"], b["feature_lens"])
        greedy_search(model, enc, lens) if method == "greedy" else modified_beam_search(model, enc, lens, beam=4)
        audio += float(b["feature_lens"].sum()) * 0.01
    return (time.perf_counter() - t) / audio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-duration", type=float, default=40.0)
    ap.add_argument("--models", nargs="+", default=["teacher", "student"])
    ap.add_argument("--data", default="data/prepare")
    ap.add_argument("--ddp", action="store_true", help="also time Lightning DDP with two 1-thread CPU processes")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=tiny")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose(args.overrides)
    dm, data = batches(Path(args.data), args.max_duration, args.steps + 2)
    print(f"{len(data)} batches of <= {args.max_duration:.0f} s, {args.threads} threads, torch {torch.__version__}")
    for name in args.models:
        torch.manual_seed(0)
        model = build(cfg.model[name], dm.tokenizer.vocab_size)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        bare_loop(model, data[:2])  # warm-up
        bare = bare_loop(model, data[2:])
        lit = lightning_loop(build(cfg.model[name], dm.tokenizer.vocab_size), data[2:], dm.tokenizer.decode)
        print(f"{name:8s} {params:5.2f} M params  bare {bare:6.1f} audio-s/s  lightning {lit:6.1f} audio-s/s  "
              f"overhead {100 * (bare / lit - 1):+5.1f} %")
        if args.ddp:
            lightning_loop(build(cfg.model[name], dm.tokenizer.vocab_size), data[2:], dm.tokenizer.decode, devices=2)
            torch.set_num_threads(args.threads)
        print(f"{'':8s} decode RTF: greedy {decode_rtf(model, data, 'greedy'):.4f}  beam4 {decode_rtf(model, data, 'beam'):.4f}")


if __name__ == "__main__":
    main()
