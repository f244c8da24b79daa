"""Per-layer MAC counting from the shapes a real forward pass sees (forward hooks)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

_CONV_KIND = {
    nn.Conv1d: "conv1d",
    nn.Conv2d: "conv2d",
    nn.Conv3d: "conv3d",
    nn.ConvTranspose1d: "conv_transpose1d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.ConvTranspose3d: "conv_transpose3d",
}
_RNN_KIND = {nn.LSTM: "lstm", nn.GRU: "gru", nn.RNN: "rnn"}
_NORM = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)


@dataclass
class LayerRecord:
    """What one layer did during the profiled call(s). ``name`` is its path in the profiled module."""

    name: str
    kind: str
    calls: int = 0
    # dense MACs over all calls, per weight tensor that multiplies activations: key is an attribute
    # path on the layer ("weight", "out_proj.weight", "in_proj_weight#1/3" = 2nd of 3 row chunks).
    # Zero-skipping scales each by that tensor's non-zero fraction.
    weight_macs: dict[str, int] = field(default_factory=dict)
    act_macs: int = 0  # activation x activation MACs (attention QK^T, AV): never skipped
    lookups: int = 0  # embedding rows gathered (its memory traffic; no MACs)

    @property
    def macs(self) -> int:
        return sum(self.weight_macs.values()) + self.act_macs

    def _add(self, key: str, macs: int) -> None:
        self.weight_macs[key] = self.weight_macs.get(key, 0) + int(macs)


# --------------------------------------------------------------------------- effective weight tensors


def _children(m: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Children, minus the `parametrizations` container: its tensors are read through the owner."""
    for name, c in m.named_children():
        if name == "parametrizations" and parametrize.is_parametrized(m):
            continue
        yield name, c


def own_tensors(m: nn.Module) -> list[tuple[str, Tensor, int]]:
    """(attribute, tensor as the forward pass sees it, storage key) for m's own parameters.

    Pruned (torch.nn.utils.prune: weight = weight_orig * mask) and parametrized (fake-quant via
    torch.nn.utils.parametrize) weights are read through the attribute, so zeros and quantized values
    are the ones the model computes with. The storage key dedupes tied weights.
    """
    out: list[tuple[str, Tensor, int]] = []
    with torch.no_grad():
        if parametrize.is_parametrized(m):
            for pname, plist in m.parametrizations.items():
                orig = getattr(plist, "original", None)
                out.append((pname, getattr(m, pname).detach(), id(orig) if orig is not None else id(plist)))
        for pname, p in m.named_parameters(recurse=False):
            base = pname[: -len("_orig")] if pname.endswith("_orig") else None
            if base and isinstance(getattr(m, base, None), Tensor):
                out.append((base, getattr(m, base).detach(), id(p)))
            else:
                out.append((pname, p.detach(), id(p)))
    return out


def layer_tensors(m: nn.Module, kind: str) -> list[tuple[str, Tensor, int]]:
    """A layer's tensors: its subtree for the known layer types (MHA owns out_proj), own ones for 'other'."""
    if kind == "other":
        return own_tensors(m)
    out: list[tuple[str, Tensor, int]] = []

    def walk(mod: nn.Module, prefix: str) -> None:
        out.extend((prefix + n, t, k) for n, t, k in own_tensors(mod))
        for cname, c in _children(mod):
            walk(c, f"{prefix}{cname}.")

    walk(m, "")
    return out


def resolve_key(m: nn.Module, key: str) -> Tensor:
    """The tensor a weight_macs key names ("out_proj.weight", "in_proj_weight#0/3")."""
    path, _, chunk = key.partition("#")
    obj: Any = m
    for part in path.split("."):
        obj = getattr(obj, part)
    t = obj.detach()
    if chunk:
        i, n = (int(v) for v in chunk.split("/"))
        t = t.chunk(n, dim=0)[i]
    return t


# --------------------------------------------------------------------------- MAC rules per layer type


def _first_tensor(x: Any) -> Tensor | None:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return x.data
    if isinstance(x, (tuple, list)) and x:
        return _first_tensor(x[0])
    return None


def _kind(m: nn.Module) -> str | None:
    for cls, kind in _CONV_KIND.items():
        if isinstance(m, cls):
            return kind
    for cls, kind in _RNN_KIND.items():
        if isinstance(m, cls):
            return kind
    if isinstance(m, nn.MultiheadAttention):
        return "attention"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Bilinear):
        return "bilinear"
    if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(m, _NORM):
        return "norm"
    return None


def _mha_macs(rec: LayerRecord, m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> None:
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs[names[i]] for i in range(3))
    E = m.embed_dim
    if q.dim() == 2:  # unbatched (L, E)
        N, L, S = 1, q.shape[0], k.shape[0]
    elif m.batch_first:
        N, L, S = q.shape[0], q.shape[1], k.shape[1]
    else:
        L, N, S = q.shape[0], q.shape[1], k.shape[0]
    if m._qkv_same_embed_dim:
        rec._add("in_proj_weight#0/3", N * L * E * E)
        rec._add("in_proj_weight#1/3", N * S * E * E)
        rec._add("in_proj_weight#2/3", N * S * E * E)
    else:
        rec._add("q_proj_weight", N * L * E * E)
        rec._add("k_proj_weight", N * S * m.kdim * E)
        rec._add("v_proj_weight", N * S * m.vdim * E)
    S_att = S + (m.bias_k is not None) + bool(m.add_zero_attn)  # extra key positions
    rec.act_macs += 2 * N * L * S_att * E  # QK^T and AV, summed over heads (heads x head_dim = E)
    rec._add("out_proj.weight", N * L * E * E)  # out_proj is applied inside MHA; its own hook never fires


def _count(rec: LayerRecord, m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    kind = rec.kind
    if kind == "linear":
        out = _first_tensor(output)
        rows = out.numel() // m.out_features
        rec._add("weight", rows * m.in_features * m.out_features)
    elif kind.startswith("conv_transpose"):
        x = _first_tensor(args)
        w = resolve_key(m, "weight")
        rec._add("weight", x.numel() * w[0].numel())  # every input element scatters in x (out/g x k) MACs
    elif kind.startswith("conv"):
        out = _first_tensor(output)
        w = resolve_key(m, "weight")
        rec._add("weight", out.numel() * w[0].numel())  # (in/groups x kernel) MACs per output element
    elif kind in ("lstm", "gru", "rnn"):
        x = _first_tensor(args)  # tensor (N,T,H)/(T,N,H)/(T,H) or PackedSequence.data (sum of lengths, H)
        steps = x.numel() // x.shape[-1]
        # per step, every gate matrix (w_ih: gates*H x in, w_hh: gates*H x H_out, w_hr: proj) multiplies
        # one vector, over all layers and directions; bias adds and gate element-wise ops not counted.
        for wname in m._flat_weights_names:
            if wname.startswith("weight_"):
                rec._add(wname, steps * resolve_key(m, wname).numel())
    elif kind == "attention":
        _mha_macs(rec, m, args, kwargs)
    elif kind == "bilinear":
        out = _first_tensor(output)
        rows = out.numel() // m.out_features
        rec._add("weight", rows * m.in1_features * m.in2_features * m.out_features)
    elif kind == "embedding":
        x = _first_tensor(args)
        rec.lookups += x.numel()
    # 'norm' and 'other': element-wise work runs outside the MAC array; parameters still count bytes.


# --------------------------------------------------------------------------- profiling


def _targets(module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Layers to hook: known compute layers, plus any other module that owns parameters ('other')."""
    out: list[tuple[str, nn.Module, str]] = []
    seen: set[int] = set()

    def walk(m: nn.Module, name: str) -> None:
        if id(m) in seen:  # shared module: profile once
            return
        seen.add(id(m))
        kind = _kind(m)
        if kind is None and own_tensors(m):
            kind = "other"
        if kind is not None:
            out.append((name, m, kind))
        if kind in ("attention",):  # owns out_proj: do not count it again
            return
        for cname, c in _children(m):
            walk(c, f"{name}.{cname}" if name else cname)

    walk(module, "")
    return out


@contextlib.contextmanager
def _no_fastpath() -> Iterator[None]:
    """The fused MHA/TransformerEncoderLayer fast path bypasses the submodules' forward (and hooks)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    old = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(old)


def profile_layers(fn: Callable[[], Any], module: nn.Module) -> list[LayerRecord]:
    """Run fn() once with forward hooks on every compute layer of `module`; per layer, the MACs of each call
    from the real input/output shapes. Returns records in first-call order; layers never called are absent.

    Counted: Linear (in x out per output row), Conv1d/2d/3d incl. groups/depthwise/stride (in/groups x
    kernel per output element), ConvTranspose, LSTM/GRU/RNN (gates x (input + hidden) x hidden per time
    step, per layer and direction, incl. LSTM projections), MultiheadAttention (q/k/v in-proj + QK^T + AV
    + out-proj; its out_proj child is not counted again), Bilinear, Embedding (0 MACs, rows gathered).
    Norms and any other parameter-owning module are recorded with 0 MACs so their bytes count.
    Layers used through functional calls on raw tensors (F.linear(x, self.w) in a custom module) are
    'other' with 0 MACs: write such models with nn layers if their MACs matter.
    """
    records: dict[str, LayerRecord] = {}
    handles = []

    def make_hook(name: str, kind: str):
        def hook(m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            rec = records.get(name)
            if rec is None:
                rec = records[name] = LayerRecord(name=name, kind=kind)
            rec.calls += 1
            _count(rec, m, args, kwargs, output)

        return hook

    try:
        for name, m, kind in _targets(module):
            handles.append(m.register_forward_hook(make_hook(name, kind), with_kwargs=True))
        with _no_fastpath():
            fn()
    finally:
        for h in handles:
            h.remove()
    return list(records.values())
