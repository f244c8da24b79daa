"""A trained model as a recognizer: any stage's ``model.pt`` or an exported student, features -> text.

MODEL is any stage's ``data/<stage>/model.pt`` (its sentencepiece model: ``tokenizer``, default
``data/prepare/tokenizer/bpe.model``) or an exported student ``*.edgeasr`` (carries its tokens);
the kind is read from the file's first bytes, not its name. A compressed ``model.pt`` gets its
activation fake-quant back, so the numbers are the stage's. Any problem with the model or its
tokenizer is a :class:`~edgeasr.cli_base.CliError` naming the file (one line, no traceback).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from edgeasr.cli_base import DEFAULT_TOKENIZER, AudioError, CliError, Notes
from edgeasr.compression import restore_fake_quant
from edgeasr.compression.actquant import float_view, is_quantized
from edgeasr.data.features import KaldiFbankConfig
from edgeasr.data.tokenizer import Tokenizer
from edgeasr.decoding import ContextGraph, greedy_search, greedy_search_streaming, modified_beam_search
from edgeasr.endpoint import EncoderStream, EndOfQuery, EndpointConfig, event_lines, simulate, stream_decisions
from edgeasr.export import MAGIC, ExportFormatError
from edgeasr.export.reader import _what_is
from edgeasr.models.io import load_model
from edgeasr.quantspec import SpecError, read_spec
from edgeasr.runtime import MAX_SYM_PER_FRAME, IntTransducer, load_student, tokens_to_text

ZIP_MAGIC = b"PK\x03\x04"
EXPECTED_MODEL = ("expected a stage's model file (data/<stage>/model.pt, a PyTorch zip) or an exported "
                  "student (*.edgeasr, starting with b'EDGEASR\\x00')")


@dataclass
class Recognizer:
    """A loaded model with the decoding interface (``encode``/``predictor``/``joiner``/``blank_id``)
    and the way its token ids become text."""

    path: Path
    kind: str  # "model.pt" or "exported"
    model: Any
    to_text: Callable[[Sequence[int]], str]
    feature_dim: int = 80
    meta: dict = field(default_factory=dict)
    note: Notes | None = None  # where the too-short warnings go (default: stderr)
    tokenizer: Tokenizer | Path | None = None  # spells --context phrases (an exported file: checked on first use)
    _stream_rt: Any = None

    @property
    def max_sym_per_frame(self) -> int:
        """Greedy tokens per encoder frame, as the model's stage evaluated it (export header, or the
        ``decoding`` meta of a model.pt; 1 for files that predate it)."""
        if self.kind == "exported":
            return int(self.model.max_sym_per_frame)
        dec = self.meta.get("decoding", {})
        n = dec.get("max_sym_per_frame", 1) if isinstance(dec, dict) else None
        if type(n) is not int or not 1 <= n <= MAX_SYM_PER_FRAME:
            raise CliError(f"{self.path}: its meta decoding={dec!r}: max_sym_per_frame must be an integer in "
                           f"1..{MAX_SYM_PER_FRAME}")
        return n

    @property
    def min_input_frames(self) -> int:
        """Fewest feature frames that give an encoder frame: the encoder's own subsampling and frame
        stacking (``4 s + 3`` for the streaming student, 7 for the teacher)."""
        return int(self.model.encoder.min_input_frames)

    def check_streaming(self, note: Notes | None = None) -> None:
        """Raise CliError if this model cannot stream; tell how a fake-quantized model.pt streams."""
        if self.kind == "exported":
            return
        if is_quantized(self.model):
            if self._stream_rt is None:
                spec = read_spec(self.meta, str(self.path), need="streaming through the integer runtime")
                with float_view(self.model) as plain:
                    self._stream_rt = IntTransducer.from_model(plain, spec, self.meta["model_cfg"])
                if note is not None:
                    note("intruntime", f"{self.path}: the fake-quantized model has no streaming path in PyTorch; "
                                       "streaming it through the integer runtime (same integers up to rounding ties)")
            return
        if not callable(getattr(self.model.encoder, "infer", None)):
            raise CliError(f"{self.path}: its encoder ({type(self.model.encoder).__name__}) is full-context (offline) "
                           "and has no streaming mode; drop --streaming")

    def _spelling(self) -> Tokenizer:
        """The sentencepiece model that spells context phrases in this model's tokens."""
        if isinstance(self.tokenizer, Tokenizer):
            return self.tokenizer
        path = Path(self.tokenizer if self.tokenizer is not None else DEFAULT_TOKENIZER)
        try:
            tok = Tokenizer(path)
        except Exception as e:
            raise CliError(f"{path}: no usable sentencepiece model to spell --context phrases ({type(e).__name__}: "
                           f"{e}); pass the one the model was trained with (--tokenizer)") from e
        pieces = [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
        if self.kind == "exported" and pieces != list(self.model.tokens):
            raise CliError(f"{path}: its pieces are not {self.path}'s tokens, so it would spell --context phrases "
                           "in another vocabulary; pass the tokenizer the model was trained with (--tokenizer)")
        self.tokenizer = tok
        return tok

    def context_graph(self, phrases: Sequence[str], boost: float, end_bonus: float, reserve: int = 0,
                      name: str = "context") -> ContextGraph | None:
        """A shallow-fusion graph over this model's tokens (phrases lower-cased, spaces collapsed);
        a phrase the tokenizer can only spell with ``<unk>`` is dropped with a note naming it.
        ``None`` when no phrase is left (decoding is then exactly unbiased)."""
        tok = self._spelling()
        seqs, dropped = [], []
        for p in phrases:
            p = " ".join(str(p).lower().split())
            if not p:
                continue
            ids = tok.encode(p)
            if tok.unk_id in ids:
                dropped.append(p)
            else:
                seqs.append(ids)
        if dropped:
            (self.note or Notes(sys.stderr))("context-unk", f"{name}: {len(dropped)} phrase(s) the model cannot spell "
                                                            f"dropped: {', '.join(map(repr, dropped[:5]))}")
        return ContextGraph(seqs, tok.vocab_size, boost, end_bonus, reserve) if seqs else None

    def recognize(self, feats, method: str = "greedy", beam: int = 4, streaming: bool = False,
                  chunk_frames: int = 32, name: str = "input", context: ContextGraph | None = None) -> list[int]:
        """feats (T, F) float -> token ids (blank removed). Input too short for one encoder frame
        gives ``[]`` and a note naming ``name`` (the encoder would fail on zero frames). ``context``:
        shallow fusion towards its phrases (modified beam search only)."""
        if context is not None and (method != "beam" or streaming):
            raise CliError("context biasing applies to offline modified beam search: use --method beam without --streaming")
        if feats.dim() != 2 or feats.size(1) != self.feature_dim:
            raise AudioError(f"{name}: features of shape {tuple(feats.shape)}, the model takes (T, {self.feature_dim})")
        need = self.min_input_frames
        if feats.size(0) < need:
            shift = KaldiFbankConfig().frame_shift_ms / 1000  # snip_edges=False: T frames ~ T * shift seconds
            (self.note or Notes(sys.stderr))(
                "short", f"{name}: {feats.size(0) * shift:.2f} s is shorter than the model's minimum input "
                         f"({need} frames = {need * shift:.2f} s); empty result")
            return []
        feats = feats.float()
        with torch.inference_mode():
            if streaming:
                return self._stream(feats, chunk_frames)
            enc, enc_lens = self.model.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]))
            if method == "greedy":
                return list(greedy_search(self.model, enc, enc_lens, self.max_sym_per_frame)[0])
            nbest = modified_beam_search(self.model, enc, enc_lens, beam=beam,
                                         contexts=[context] if context is not None else None)[0]
            return list(nbest[0].tokens) if nbest else []

    def _stream(self, feats, chunk_frames: int) -> list[int]:
        self.check_streaming()
        model = self.model if self.kind == "exported" else (self._stream_rt or self.model)
        enc, hyps, dec = EncoderStream(model), [[]], None
        for i in range(0, feats.size(0), chunk_frames):
            out = enc.push(feats[i: i + chunk_frames])
            hyps, dec = greedy_search_streaming(model, out, torch.tensor([out.size(1)]), dec,
                                                max_sym_per_frame=self.max_sym_per_frame)
        return list(hyps[0])

    def endpoint_events(self, feats, cfg: EndpointConfig, eoq: EndOfQuery, chunk_frames: int,
                        name: str = "input") -> list[tuple[float, str, str]]:
        """Stream ``feats`` (T, F) with modified beam search and both end-pointers of ``cfg``:
        ``(time_s, kind, text)`` lines (:func:`edgeasr.endpoint.event_lines`)."""
        self.check_streaming()
        if feats.dim() != 2 or feats.size(1) != self.feature_dim:
            raise AudioError(f"{name}: features of shape {tuple(feats.shape)}, the model takes (T, {self.feature_dim})")
        model = self.model if self.kind == "exported" else (self._stream_rt or self.model)
        stop = max(cfg.final.incomplete_s, cfg.speculative.incomplete_s) + 0.01
        trace = stream_decisions(model, feats.float(), chunk_frames, cfg.beam, eoq, lambda ids: self.to_text(ids).split(),
                                 stop_silence_s=stop, vad_margin_db=cfg.vad_margin_db, support_s=cfg.support_s,
                                 temperature=cfg.beam_temperature, max_sym_per_frame=cfg.max_sym_per_frame)
        return event_lines(trace, simulate(trace.points, cfg.final, cfg.speculative), self.to_text)

    def transcribe_features(self, feats, **kw) -> str:
        return self.to_text(self.recognize(feats, **kw))


def _describe(head: bytes) -> str:
    if not head:
        return "the file is empty"
    return _what_is(head)


def load_recognizer(model_path: str | Path, tokenizer: str | Path | None = None,
                    note: Notes | None = None) -> Recognizer:
    """Load MODEL by content (export magic or a torch zip); any problem -> CliError naming the file."""
    note = note or Notes(sys.stderr)
    path = Path(model_path)
    if not path.exists():
        raise CliError(f"{path}: model file not found; {EXPECTED_MODEL}")
    if not path.is_file():
        raise CliError(f"{path}: not a regular file; {EXPECTED_MODEL}")
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise CliError(f"{path}: cannot read the model file ({e.strerror or e})") from e
    if head.startswith(MAGIC) or (head and MAGIC.startswith(head)):  # a truncated export: the loader says so
        return _load_exported(path, tokenizer, note)
    if head.startswith(ZIP_MAGIC):
        return _load_torch(path, tokenizer, note)
    raise CliError(f"{path}: not a model file ({_describe(head)}); {EXPECTED_MODEL}")


def _load_exported(path: Path, tokenizer, note: Notes) -> Recognizer:
    try:
        rt = load_student(path)
    except ExportFormatError as e:
        raise CliError(str(e)) from e
    except Exception as e:  # the loader should have said it; never a traceback for a bad file
        raise CliError(f"{path}: cannot load the exported student ({type(e).__name__}: {e})") from e
    if tokenizer is not None:
        note("tokenizer", f"--tokenizer {tokenizer}: {path} carries its own token list; the tokenizer only "
                          "spells --context phrases")
    tokens = rt.tokens
    dim = rt.encoder.input_dim
    return Recognizer(path, "exported", rt, lambda ids: tokens_to_text(tokens, ids, rt.blank_id), dim,
                      dict(rt.header), note, Path(tokenizer) if tokenizer is not None else None)


def _load_torch(path: Path, tokenizer, note: Notes) -> Recognizer:
    try:
        model, meta = load_model(path)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from e
    except Exception as e:
        raise CliError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from e
    try:
        spec = read_spec(meta, str(path))  # None: an fp32 model
        if spec is not None:
            restore_fake_quant(model, spec).eval()
    except SpecError as e:  # names the file already
        raise CliError(str(e)) from e
    except Exception as e:  # metadata the spec check let through; never a traceback for a bad file
        raise CliError(f"{path}: cannot restore its activation quantization ({type(e).__name__}: {e})") from e
    tok_path = Path(tokenizer if tokenizer is not None else DEFAULT_TOKENIZER)
    try:
        tok = Tokenizer(tok_path)
    except FileNotFoundError as e:
        raise CliError(f"{tok_path}: tokenizer not found; pass the model's sentencepiece model with --tokenizer "
                       f"(the prepare stage writes {DEFAULT_TOKENIZER})") from e
    except Exception as e:
        raise CliError(f"{tok_path}: not a usable sentencepiece tokenizer ({type(e).__name__}: {e})") from e
    if tok.vocab_size != model.vocab_size:
        raise CliError(f"{tok_path} has {tok.vocab_size} tokens but {path} was trained with {model.vocab_size}; "
                       "pass the tokenizer the model was trained with (--tokenizer)")
    return Recognizer(path, "model.pt", model, tok.decode, int(model.encoder.input_dim), meta, note, tok)
