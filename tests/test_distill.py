"""Distillation: the collapsed-distribution KL, the DistillLitModule step, mixed labeled +
pseudo-labeled batches, and (slow) the tiny ``distill`` stage end to end."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch
from lhotse import CutSet

from conftest import compose
from edgeasr.losses import collapsed_kl, collapsed_log_probs, node_mask
from edgeasr.training.distill import collate_targets, distill_loss

N, T, V = 3, 7, 11
Y = torch.tensor([[3, 5, 2, 9], [4, 4, 0, 0], [7, 0, 0, 0]])
Y_LENS = torch.tensor([4, 2, 1])
ENC_LENS = torch.tensor([7, 5, 3])


def lattice(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(N, T, Y.size(1) + 1, V) * 2


def test_collapsed_distribution_is_normalised_and_exact():
    logits = lattice(0)
    lp = collapsed_log_probs(logits, Y, Y_LENS, blank=0)
    assert lp.shape == (N, T, 5, 3)
    mask = node_mask(ENC_LENS, Y_LENS, T, 4)
    total = lp.exp().sum(-1)
    assert torch.allclose(total[mask], torch.ones(int(mask.sum())), atol=1e-5)
    full = logits.log_softmax(-1)
    # utterance 0, node (t=2, u=1): next label is Y[0, 1] = 5
    assert torch.isclose(lp[0, 2, 1, 0], full[0, 2, 1, 5]) and torch.isclose(lp[0, 2, 1, 1], full[0, 2, 1, 0])
    # after the last label (u = U) the label event is impossible
    assert torch.isinf(lp[1, 0, 2, 0]) and torch.isclose(lp[1, 0, 2, 1].exp() + lp[1, 0, 2, 2].exp(), torch.tensor(1.0))


def test_kd_loss_zero_for_equal_outputs_positive_otherwise():
    teacher = lattice(0)
    t_logp = collapsed_log_probs(teacher, Y, Y_LENS)
    same = distill_loss(teacher.clone(), Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS)
    assert abs(float(same)) < 1e-4
    other = distill_loss(lattice(1), Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS)
    assert float(other) > 0.1
    # fp16 cached targets (what the stage stores) give the same loss to ~1e-2 relative
    cached, lens = collate_targets({f"c{i}": t_logp[i, : ENC_LENS[i], : Y_LENS[i] + 1].half() for i in range(N)},
                                   [f"c{i}" for i in range(N)])
    assert torch.isclose(distill_loss(lattice(1), Y, Y_LENS, ENC_LENS, cached, lens), other, rtol=1e-2)
    # a row without teacher targets (length 0) adds nothing
    no_row0 = distill_loss(lattice(1), Y, Y_LENS, ENC_LENS, t_logp, torch.tensor([0, 5, 3]))
    assert 0 < float(no_row0) < float(other)


def test_kd_gradient_flows_into_the_student_only():
    teacher = lattice(0).requires_grad_(True)
    student = lattice(1).requires_grad_(True)
    t_logp = collapsed_log_probs(teacher, Y, Y_LENS)
    loss = distill_loss(student, Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0
    # nodes outside the lattice (t >= T_n) get no gradient
    assert student.grad[2, 3:].abs().sum() == 0


def test_kd_step_moves_student_toward_teacher():
    teacher = lattice(0)
    t_logp = collapsed_log_probs(teacher, Y, Y_LENS)
    student = lattice(1).requires_grad_(True)
    opt = torch.optim.SGD([student], lr=0.5)
    losses = []
    for _ in range(20):
        loss = distill_loss(student, Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_collapsed_kl_rejects_nothing_silently_on_shape_mismatch():
    with pytest.raises(ValueError, match="label positions"):
        collapsed_log_probs(lattice(0), Y[:, :3], Y_LENS)
    t_logp = collapsed_log_probs(lattice(0), Y, Y_LENS)[:, :, :3]
    with pytest.raises(ValueError, match="teacher targets cover"):
        distill_loss(lattice(1), Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS)
    assert collapsed_kl(t_logp, t_logp, torch.ones(N, T, 3, dtype=torch.bool)) == 0


def _pseudo_from(cuts, tokenizer):
    """Stand-in pseudo labels: labeled cuts relabeled as unlabeled with their own token ids."""
    from lhotse.utils import fastcopy

    out = []
    for c in cuts:
        s = c.supervisions[0]
        out.append(fastcopy(c, id=f"pseudo-{c.id}", supervisions=[fastcopy(
            s, text=s.text, custom={"tokens": tokenizer.encode(s.text), "confidence": 1.0})]))
    return CutSet.from_cuts(out)


def test_distill_batches_mix_labeled_and_pseudo_audio_at_the_ratio(tiny_prepared, monkeypatch):
    from edgeasr.data.datamodule import DistillDataModule
    from edgeasr.training.distill import teacher_targets
    from edgeasr.models import build_transducer

    root, cfg, _ = tiny_prepared
    monkeypatch.chdir(root)  # feature paths in the manifests are relative to the repository root
    prep = root / "data" / "prepare"
    dm = DistillDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                           max_duration=20.0, num_buckets=2)
    pseudo = _pseudo_from(dm.cuts("dev"), dm.tokenizer)
    torch.manual_seed(0)
    teacher = build_transducer({**cfg.model.teacher, "vocab_size": dm.tokenizer.vocab_size})
    targets = teacher_targets(teacher, dm.cuts_dataloader(pseudo.subset(first=6)))
    assert len(targets) == 6 and all(t.dtype == torch.float16 and t.size(-1) == 3 for t in targets.values())

    dm = DistillDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", train_splits=["train"],
                           max_duration=20.0, num_buckets=2, pseudo_cuts=pseudo, targets=targets, unlabeled_ratio=0.4)
    lab_s = unl_s = 0.0
    for i, b in enumerate(dm.train_dataloader()):
        is_pseudo = [c.startswith("pseudo-") for c in b["cut_ids"]]
        assert any(is_pseudo) and not all(is_pseudo)
        secs = (b["feature_lens"].float() * 0.01).tolist()
        unl_s += sum(s for s, p in zip(secs, is_pseudo) if p)
        lab_s += sum(s for s, p in zip(secs, is_pseudo) if not p)
        assert all(len(t) > 0 for t in b["tokens"])  # pseudo cuts carry their token ids
        assert b["teacher_logp"].shape[0] == len(b["cut_ids"])
        has = [c in targets for c in b["cut_ids"]]
        assert (b["teacher_lens"] > 0).tolist() == has
        if i == 4:
            break
    assert 0.25 < unl_s / (lab_s + unl_s) < 0.55
    with pytest.raises(ValueError, match="unlabeled_ratio"):
        DistillDataModule(prep / "manifests", prep / "tokenizer" / "bpe.model", unlabeled_ratio=1.0)


@pytest.mark.slow
def test_tiny_distill_stage_reports_student_baseline_and_pseudo_wer(tiny_prepared, tmp_path, monkeypatch):
    """Run as a Hydra multirun job would: everything it writes lands in the job's folder."""
    from mlflow.tracking import MlflowClient

    from edgeasr.stages import distill, train_teacher

    shutil.copytree(tiny_prepared[0] / "data" / "prepare", tmp_path / "data" / "prepare")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(["experiment=tiny", "trainer.progress=false"])
    train_teacher.run(cfg)
    t0 = time.perf_counter()
    job = tmp_path / "multirun" / "0"
    metrics = distill.run(cfg, job_dir=job)
    elapsed = time.perf_counter() - t0
    assert not (tmp_path / "data/distill").exists() and not (tmp_path / "reports/distill.json").exists()
    report = json.loads((job / "reports/distill.json").read_text())
    assert report == pytest.approx(metrics)
    for key in ("wer/test", "baseline/wer/test", "pseudo/wer", "sparsity", "size_bytes", "emulated_latency_ms",
                "teacher_targets_s", "wer_ratio_to_teacher"):
        assert key in report, key
    assert report["pseudo/kept"] + report["pseudo/dropped_empty"] + report["pseudo/dropped_low_confidence"] == \
        len(CutSet.from_file(tmp_path / "data/prepare/manifests/cuts_unlabeled.jsonl.gz"))
    assert (job / "data/distill/model.pt").is_file()
    pseudo = CutSet.from_file(job / "data/distill/pseudo_labels.jsonl.gz")
    assert len(pseudo.to_eager()) == report["pseudo/kept"]  # written whole (write_manifest), no temp file left
    assert not list((job / "data/distill").glob(".*"))
    assert (job / "data/distill/results/baseline/errs-test.txt").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("edgeasr").experiment_id])
            if r.data.tags.get("edgeasr.kind") != "pipeline"}  # by hand, the parent is named "distill" too
    assert {"distill", "distill/baseline"} <= set(runs)
    assert runs["distill/baseline"].data.tags["mlflow.parentRunId"] == runs["distill"].info.run_id
    assert client.get_metric_history(runs["distill"].info.run_id, "train/kd_loss")
    assert "wer/test" in runs["distill/baseline"].data.metrics
    assert runs["distill/baseline"].info.status == "FINISHED"
    print(f"tiny distill stage: {elapsed:.1f} s")

    # The baseline trained in its own 1-thread process (the default on >= 2 threads) is the one the
    # stage trains itself on 1 thread: same seed, data and steps, bit for bit.
    assert cfg.distill.baseline_process and cfg.trainer.num_threads >= 2
    one = distill.run(compose(["experiment=tiny", "trainer.progress=false", "trainer.num_threads=1"]),
                      job_dir=tmp_path / "multirun" / "1")
    base = {k: v for k, v in report.items() if k.startswith("baseline/")}
    assert base and base == {k: v for k, v in one.items() if k.startswith("baseline/")}


def _brute_occupancy(lp, T, U):
    """Enumerate every alignment of a (T, U) lattice: node-visit probabilities by brute force."""
    import itertools

    visits, total = torch.zeros(T, U + 1, dtype=torch.float64), 0.0
    for moves in set(itertools.permutations("b" * (T - 1) + "l" * U)):
        t = u = 0
        p, nodes = 1.0, [(0, 0)]
        for m in moves:
            if m == "b":
                p *= lp[t, u, 1].exp()
                t += 1
            else:
                p *= lp[t, u, 0].exp()
                u += 1
            nodes.append((t, u))
        p *= lp[T - 1, U, 1].exp()
        total += p
        for node in set(nodes):
            visits[node] += p
    return visits / total


def test_node_occupancy_matches_brute_force():
    from edgeasr.losses.distill import node_occupancy

    logits = lattice(3)
    lp = collapsed_log_probs(logits, Y, Y_LENS)
    occ = node_occupancy(lp, ENC_LENS, Y_LENS).exp()
    for i in range(N):
        T_, U_ = int(ENC_LENS[i]), int(Y_LENS[i])
        ref = _brute_occupancy(lp[i].double(), T_, U_)
        assert torch.allclose(occ[i, :T_, : U_ + 1].double(), ref, atol=1e-4), i
        assert occ[i, T_:].sum() == 0 and occ[i, :, U_ + 1 :].sum() == 0
        assert torch.isclose(occ[i, 0, 0], torch.tensor(1.0)) and torch.isclose(occ[i, T_ - 1, U_], torch.tensor(1.0))


def test_occupancy_weighted_kd_is_zero_for_equal_outputs_and_weights_alignment_nodes():
    from edgeasr.losses.distill import node_occupancy

    t_logp = collapsed_log_probs(lattice(0), Y, Y_LENS)
    occ = node_occupancy(t_logp, ENC_LENS, Y_LENS)
    targets = torch.cat([t_logp, occ.unsqueeze(-1)], -1)
    assert abs(float(distill_loss(lattice(0), Y, Y_LENS, ENC_LENS, targets, ENC_LENS))) < 1e-4
    weighted = distill_loss(lattice(1), Y, Y_LENS, ENC_LENS, targets, ENC_LENS)
    uniform = distill_loss(lattice(1), Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS)
    assert 0 < float(weighted) < float(uniform)  # occupancies are <= 1


def test_kd_delay_matches_student_frame_t_with_teacher_frame_t_minus_d():
    teacher = lattice(0)
    t_logp = collapsed_log_probs(teacher, Y, Y_LENS)
    # a student whose lattice is the teacher's, two frames later, matches it exactly at delay 2
    student = torch.cat([torch.randn(N, 2, Y.size(1) + 1, V), teacher[:, :-2]], dim=1)
    assert abs(float(distill_loss(student, Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS, delay=2))) < 1e-4
    assert float(distill_loss(student, Y, Y_LENS, ENC_LENS, t_logp, ENC_LENS, delay=0)) > 0.1


def test_tiny_distill_trains_a_student_with_an_attention_biaser(tiny_prepared, tmp_path, monkeypatch):
    """Distillation keeps working with the biaser: the student trains on context lists (pseudo-labeled
    cuts get distractors only), its report holds the attention measurements, the file rebuilds it."""
    from edgeasr.models.io import load_model
    from edgeasr.stages import distill, train_teacher

    shutil.copytree(tiny_prepared[0] / "data" / "prepare", tmp_path / "data" / "prepare")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose(["experiment=tiny", "trainer.progress=false", "distill.baseline=false",
                   "model.student.biaser={dim: 16, heads: 2}"])
    train_teacher.run(cfg)
    report = distill.run(cfg)
    assert report["biaser_params"] > 0 and 0 <= report["attn/test_rare/list10/attn/b_wer"] < 1000
    model, meta = load_model(tmp_path / "data/distill/model.pt")
    assert meta["model_cfg"]["biaser"] == {"dim": 16, "heads": 2}
    assert model.biaser.out.weight.abs().sum() > 0
