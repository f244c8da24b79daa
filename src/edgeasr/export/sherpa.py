"""The student as sherpa-onnx bundles: ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` (+ int8).

sherpa-onnx 2.0.1's transducer contract (NOTES.md §8), which these files follow:

* encoder, offline: ``x`` float32 (N, T, 80), ``x_lens`` int64 (N,) -> ``encoder_out`` (N, T', J),
  ``encoder_out_lens`` int64 (N,). Inputs are taken by position; no metadata is required.
* encoder, streaming (``OnlineRecognizer``, model type ``lstm``): ``x`` (N, T, 80), ``state0``
  (L, N, d_model), ``state1`` (L, N, rnn_hidden_size) -> ``encoder_out`` (N, m, J), ``new_state0``,
  ``new_state1``; metadata ``model_type=lstm``, ``T``, ``decode_chunk_len``, ``num_encoder_layers``,
  ``d_model``, ``rnn_hidden_size``. sherpa feeds ``T = 4 s m + 3`` feature frames per call and
  advances by ``decode_chunk_len = 4 s m`` (s = frame_stack, m = ``chunk_frames`` encoder frames),
  which is exactly what :meth:`LstmEncoder.streaming_forward` was built for.
* decoder: ``y`` int64 (N, context_size) -> ``decoder_out`` (N, J); metadata ``vocab_size``,
  ``context_size``. The start context is ``[-1, ..., -1, blank]`` and -1 embeds to zeros.
* joiner: ``encoder_out`` (N, J), ``decoder_out`` (N, J) -> ``logit`` (N, V), raw (no log-softmax).
* ``tokens.txt`` (``symbol id``, blank = 0), ``bpe.model`` and ``bpe.vocab`` (``piece<TAB>score``,
  what sherpa's ``bpe_vocab=`` reads to encode hotwords with ``modeling_unit="bpe"``).

The int8 files are ``onnxruntime.quantization.quantize_dynamic`` over every op type it knows
(MatMul, Conv, LSTM, Gather, ...), int8 symmetric weights. The joiner's output Linear is exported
as MatMul + Add (not Gemm, which dynamic quantization skips) so it is quantized too.

Pruned weights stay exactly zero: :func:`check_fp32_zeros` finds every PyTorch weight matrix among
the ONNX initializers (up to the permutations export applies: transposes, LSTM gate order) and
:func:`check_int8_zeros` checks every pruned entry quantizes to the zero level.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import sentencepiece as spm
import torch
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn

from edgeasr.data.tokenizer import Tokenizer
from edgeasr.models.encoders import LstmEncoder
from edgeasr.models.predictor import StatelessPredictor

DEFAULT_CHUNK_FRAMES = 4  # encoder output frames per streaming chunk (320 ms at frame_stack 2)
OPSET = 17
PARTS = ("encoder", "decoder", "joiner")


# ---- export wrappers (shape-generic, no Python control flow on values) ------------------------
class _OfflineEncoder(nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor):
        # No trimming to max(x_lens): padding after a valid frame never reaches it (causal convs
        # see frames 4j..4j+6 only, unidirectional LSTMs), so padded batches decode like single ones.
        h, h_lens = self.enc._subsample(x, x_lens)
        for norm, lstm in zip(self.enc.norms, self.enc.lstms):
            h = h + lstm(norm(h))[0]
        return self.enc.output(self.enc.final_norm(h)), h_lens.to(torch.int64)


class _StreamingEncoder(nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x: torch.Tensor, state0: torch.Tensor, state1: torch.Tensor):
        return self.enc.streaming_forward(x, state0, state1)


class _Decoder(nn.Module):
    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.predictor.step(y)


class _Joiner(nn.Module):
    def __init__(self, joiner):
        super().__init__()
        self.joiner = joiner

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        # (N, 1, J) -> MatMul + Add instead of Gemm: onnxruntime's dynamic quantization skips Gemm.
        s = torch.tanh(encoder_out + decoder_out).unsqueeze(1)
        return self.joiner.output(s).squeeze(1)


# ---- bundle -------------------------------------------------------------------------------
@dataclass
class SherpaBundle:
    """One exported directory. ``files(int8)`` gives the paths sherpa-onnx's recognizers take."""

    dir: Path
    streaming: bool
    int8: bool
    info: dict[str, Any] = field(default_factory=dict)

    def files(self, int8: bool = False) -> dict[str, str]:
        if int8 and not self.int8:
            raise ValueError(f"{self.dir} has no int8 models (export with int8=True)")
        suffix = ".int8.onnx" if int8 else ".onnx"
        out = {p: str(self.dir / f"{p}{suffix}") for p in PARTS}
        out.update(tokens=str(self.dir / "tokens.txt"), bpe_vocab=str(self.dir / "bpe.vocab"))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "SherpaBundle":
        """A bundle directory written by :func:`export_sherpa` (reads its ``bundle.json``)."""
        d = Path(path)
        f = d / "bundle.json"
        if not f.is_file():
            raise FileNotFoundError(f"{d} is not a sherpa-onnx bundle from edgeasr (no bundle.json); "
                                    "write it with edgeasr.export.sherpa.export_sherpa")
        info = json.loads(f.read_text())
        return cls(d, bool(info["streaming"]), bool(info["int8"]), info)


def _check_model(model) -> None:
    if not isinstance(model.encoder, LstmEncoder):
        raise ValueError(f"sherpa-onnx export supports the LSTM student encoder, got {type(model.encoder).__name__}")
    if not isinstance(model.predictor, StatelessPredictor):
        raise ValueError("sherpa-onnx transducers need a stateless predictor (embedding + conv over the last "
                         f"context_size tokens), got {type(model.predictor).__name__}")
    if int(model.blank_id) != 0:
        raise ValueError(f"sherpa-onnx hard-codes blank = 0, the model's blank is {model.blank_id}")


def write_bpe_vocab(bpe_model: str | Path, path: str | Path) -> Path:
    """``piece<TAB>score`` per id (``spm_export_vocab`` format), sherpa-onnx's ``bpe_vocab``."""
    sp = spm.SentencePieceProcessor(model_file=str(bpe_model))
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(sp.get_piece_size()):
            f.write(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n")
    return path


def add_metadata(path: str | Path, meta: Mapping[str, Any]) -> None:
    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = str(k), str(v)
    onnx.save(m, str(path))


def onnx_metadata(path: str | Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic_axes: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about sizes turned into Python ints
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def quantize_int8(src: str | Path, dst: str | Path, per_channel: bool = False) -> Path:
    """``quantize_dynamic`` over all op types onnxruntime quantizes dynamically, int8 weights."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" advice, logged on the root logger per call
    try:
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=None, per_channel=per_channel,
                         weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    # quantize_dynamic keeps the metadata; make sure (sherpa-onnx reads it from the int8 files too)
    meta = onnx_metadata(src)
    if onnx_metadata(dst) != meta:
        add_metadata(dst, meta)
    return Path(dst)


def chunk_geometry(model, chunk_frames: int) -> tuple[int, int]:
    """(T, decode_chunk_len): feature frames per encoder call and the shift between calls."""
    s = int(model.encoder.frame_stack)
    shift = 4 * s * int(chunk_frames)
    return shift + 3, shift


def export_sherpa(model, tokenizer_dir: str | Path, out_dir: str | Path, *, streaming: bool,
                  chunk_frames: int = DEFAULT_CHUNK_FRAMES, int8: bool = True, per_channel: bool = False,
                  extra_meta: Mapping[str, Any] | None = None) -> SherpaBundle:
    """Write one sherpa-onnx bundle for the student ``model`` to ``out_dir``.

    ``tokenizer_dir``: the prepare stage's ``tokenizer/`` (``bpe.model``; ``tokens.txt`` is
    rewritten from it). ``streaming``: an ``OnlineRecognizer`` LSTM bundle with ``chunk_frames``
    encoder frames per chunk, else an ``OfflineRecognizer`` one. ``int8``: also
    ``*.int8.onnx`` next to the fp32 files. Checks that pruned weights are still zero in every
    file (raises ``AssertionError`` otherwise) and records what it wrote in ``bundle.json``.
    """
    _check_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(Path(tokenizer_dir) / "bpe.model")
    if tok.vocab_size != model.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} pieces, the model's joiner {model.vocab_size}")
    model = copy.deepcopy(model).float().eval().cpu()
    enc, pred = model.encoder, model.predictor
    j = int(model.joiner.joiner_dim)

    shutil.copy(tok.path, out / "bpe.model")
    tok.write_tokens_txt(out / "tokens.txt")
    write_bpe_vocab(tok.path, out / "bpe.vocab")

    common = {"edgeasr_version": 1, "vocab_size": model.vocab_size, "joiner_dim": j,
              "subsampling_factor": enc.subsampling_factor, "frame_stack": enc.frame_stack,
              **{k: v for k, v in (extra_meta or {}).items()}}
    if streaming:
        t_frames, shift = chunk_geometry(model, chunk_frames)
        enc_meta = {"model_type": "lstm", "T": t_frames, "decode_chunk_len": shift,
                    "num_encoder_layers": enc.num_layers, "d_model": enc.hidden, "rnn_hidden_size": enc.hidden,
                    "chunk_frames": int(chunk_frames), **common}
        h0 = torch.zeros(enc.num_layers, 1, enc.hidden)
        _export(_StreamingEncoder(enc).eval(), (torch.randn(1, t_frames, enc.input_dim), h0, h0.clone()),
                out / "encoder.onnx", ["x", "state0", "state1"], ["encoder_out", "new_state0", "new_state1"],
                {"x": {0: "N"}, "state0": {1: "N"}, "state1": {1: "N"}, "encoder_out": {0: "N"},
                 "new_state0": {1: "N"}, "new_state1": {1: "N"}})
    else:
        enc_meta = {"comment": "edgeasr LSTM student, offline", **common}
        x = torch.randn(2, 123, enc.input_dim)
        _export(_OfflineEncoder(enc).eval(), (x, torch.tensor([123, 100])), out / "encoder.onnx",
                ["x", "x_lens"], ["encoder_out", "encoder_out_lens"],
                {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, "encoder_out": {0: "N", 1: "T_out"},
                 "encoder_out_lens": {0: "N"}})
    add_metadata(out / "encoder.onnx", enc_meta)

    ctx = pred.start_context(2)
    _export(_Decoder(pred).eval(), (ctx,), out / "decoder.onnx", ["y"], ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}})
    add_metadata(out / "decoder.onnx", {"vocab_size": model.vocab_size, "context_size": pred.context_size, **common})
    _export(_Joiner(model.joiner).eval(), (torch.randn(2, j), torch.randn(2, j)), out / "joiner.onnx",
            ["encoder_out", "decoder_out"], ["logit"], {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}})
    add_metadata(out / "joiner.onnx", {"joiner_dim": j, **common})

    info: dict[str, Any] = {"streaming": bool(streaming), "int8": bool(int8), "metadata": {"encoder": enc_meta},
                            "zeros": {}, "bytes": {}}
    if streaming:
        info["chunk"] = {"chunk_frames": int(chunk_frames), "T": t_frames, "decode_chunk_len": shift}
    info["zeros"]["fp32"] = check_fp32_zeros(model, [out / f"{p}.onnx" for p in PARTS])
    for p in PARTS:
        info["bytes"][f"{p}.onnx"] = (out / f"{p}.onnx").stat().st_size
    if int8:
        info["per_channel"] = bool(per_channel)
        z8: dict[str, Any] = {}
        for p in PARTS:
            quantize_int8(out / f"{p}.onnx", out / f"{p}.int8.onnx", per_channel=per_channel)
            z8[p] = check_int8_zeros(out / f"{p}.onnx", out / f"{p}.int8.onnx")
            info["bytes"][f"{p}.int8.onnx"] = (out / f"{p}.int8.onnx").stat().st_size
        info["zeros"]["int8"] = z8
    (out / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    return SherpaBundle(out, bool(streaming), bool(int8), info)


def export_sherpa_bundles(model, tokenizer_dir: str | Path, out_dir: str | Path, *,
                          chunk_frames: int = DEFAULT_CHUNK_FRAMES, int8: bool = True,
                          per_channel: bool = False, extra_meta: Mapping[str, Any] | None = None) -> dict[str, SherpaBundle]:
    """``out_dir/offline`` and ``out_dir/streaming``, each with fp32 (+ int8) files."""
    out = Path(out_dir)
    return {
        "offline": export_sherpa(model, tokenizer_dir, out / "offline", streaming=False, int8=int8,
                                 per_channel=per_channel, extra_meta=extra_meta),
        "streaming": export_sherpa(model, tokenizer_dir, out / "streaming", streaming=True, chunk_frames=chunk_frames,
                                   int8=int8, per_channel=per_channel, extra_meta=extra_meta),
    }


# ---- pruned weights stay zero -------------------------------------------------------------
def _initializers(path: str | Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def check_fp32_zeros(model, onnx_paths) -> dict[str, Any]:
    """Every weight matrix (>= 2-D) of the exported parts of ``model`` must appear among the ONNX
    initializers with the same values up to a permutation (export transposes Linear weights and
    reorders LSTM gates), hence with the same zeros. Raises ``AssertionError`` naming the tensor
    that is missing or changed. Returns zero counts."""
    inits: list[np.ndarray] = []
    for p in onnx_paths:
        inits += [a for a in _initializers(p).values() if a.dtype == np.float32 and a.ndim >= 2]
    pool: dict[int, list[np.ndarray]] = {}
    for a in inits:
        pool.setdefault(a.size, []).append(np.sort(a.ravel()))
    exported = {"encoder", "predictor", "joiner"}
    n_zero = n_total = 0
    for name, w in model.state_dict().items():
        if name.split(".")[0] not in exported or w.dim() < 2:
            continue
        v = np.sort(w.detach().float().cpu().numpy().ravel())
        if not any(np.array_equal(v, c) for c in pool.get(v.size, [])):
            raise AssertionError(f"weight {name} {tuple(w.shape)} is not in the ONNX files unchanged "
                                 "(zeros or values altered by export)")
        n_zero += int((v == 0).sum())
        n_total += v.size
    onnx_zero = sum(int((a == 0).sum()) for a in inits)
    return {"weights": n_total, "zeros": n_zero, "sparsity": round(n_zero / max(1, n_total), 6),
            "onnx_zeros": onnx_zero}


def check_int8_zeros(fp32_path: str | Path, int8_path: str | Path) -> dict[str, Any]:
    """Each quantized initializer ``<w>_quantized`` of ``int8_path`` against ``<w>`` in the fp32
    file: every exact zero must sit on the zero point (dequantizes to exactly 0). Raises
    ``AssertionError``. Returns counts, including float weights left unquantized."""
    f32 = _initializers(fp32_path)
    q = _initializers(int8_path)
    zeros = on_zero = quantized = levels_zero = 0
    for name, lv in q.items():
        if not name.endswith("_quantized"):
            continue
        base = name[: -len("_quantized")]
        w = f32.get(base)
        zp = q.get(base + "_zero_point")
        if w is None or zp is None:
            continue
        zp = np.asarray(zp)
        if np.any(zp != zp.ravel()[0]):
            raise AssertionError(f"{int8_path}: {name} has per-channel zero points; expected symmetric int8")
        z = zp.ravel()[0]
        # quantized LSTM weights are stored transposed (gates last)
        if lv.shape == w.shape:
            mask, lvl = w == 0, lv
        elif lv.ndim == w.ndim and lv.shape == w.swapaxes(-1, -2).shape:
            mask, lvl = w.swapaxes(-1, -2) == 0, lv
        else:
            raise AssertionError(f"{int8_path}: {name} {lv.shape} does not match {base} {w.shape}")
        bad = int((lvl[mask] != z).sum())
        if bad:
            raise AssertionError(f"{int8_path}: {bad} pruned entries of {base} are not on the zero level")
        zeros += int(mask.sum())
        on_zero += int((lvl[mask] == z).sum())
        levels_zero += int((lvl == z).sum())
        quantized += lv.size
    left_float = {n: int(a.size) for n, a in q.items() if a.dtype == np.float32 and a.ndim >= 2
                  and not n.endswith(("_scale", "_zero_point"))}
    return {"quantized_weights": quantized, "pruned": zeros, "pruned_on_zero_level": on_zero,
            "zero_levels": levels_zero, "float_tensors_left": left_float}
