"""``edgeasr``: use a trained model outside the pipeline (issue 7, part 4).

    edgeasr transcribe MODEL AUDIO... [--streaming] [--chunk-ms 320] [--method greedy|beam] [--beam 4]
    edgeasr score MODEL SET [--out DIR] [--method greedy|beam] [--beam 4] [--streaming]

MODEL is any stage's ``data/<stage>/model.pt`` (tokenizer: ``--tokenizer``, default
``data/prepare/tokenizer/bpe.model``) or an exported student ``*.edgeasr`` (carries its tokens);
the kind is read from the file's first bytes, not its name. A compressed ``model.pt`` gets its
activation fake-quant back, so the numbers are the stage's. SET is a lhotse cuts manifest
(features or recordings) or a TSV ``audio_path<TAB>reference text`` (paths relative to the TSV).

Audio goes through the prepare stage's feature extractor (:class:`edgeasr.data.features.KaldiFbank`
with its defaults, which are ``prepare.features``), at 16 kHz (other rates are resampled, as the
prepare stage does) on channel 0 (the channel the prepare stage's cuts use).

Exit codes: 0 ok; 1 some audio could not be used (each file reported on stderr, the rest processed);
2 bad usage, or a model / tokenizer / set file that cannot be used (one line, no traceback).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

SAMPLE_RATE = 16000
DEFAULT_TOKENIZER = "data/prepare/tokenizer/bpe.model"
ZIP_MAGIC = b"PK\x03\x04"
EXPECTED_MODEL = ("expected a stage's model file (data/<stage>/model.pt, a PyTorch zip) or an exported "
                  "student (*.edgeasr, starting with b'EDGEASR\\x00')")


class CliError(Exception):
    """The model, tokenizer, set or options cannot be used: one line on stderr, exit code 2."""


class AudioError(Exception):
    """One input cannot be used; reported naming it, the others go on (exit code 1 at the end)."""


class _Notes:
    """Informational lines on stderr; ``collapse``: each kind printed once, repeats counted."""

    def __init__(self, err: TextIO, collapse: bool = False):
        self.err, self.collapse = err, collapse
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str, msg: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if not self.collapse or self.counts[kind] == 1:
            _write(f"edgeasr: {msg}", self.err)

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if self.collapse and n > 1:
                _write(f"edgeasr: ... {n - 1} more like that ({kind})", self.err)


def _write(msg: str, err: TextIO) -> None:
    from tqdm import tqdm

    tqdm.write(msg, file=err)  # keeps an active progress bar intact


# --------------------------------------------------------------------------- audio and features


def audio_features(samples, sampling_rate: int = SAMPLE_RATE):
    """(T, 80) float32 log-mel fbank exactly as the prepare stage computes it."""
    import torch

    from edgeasr.data.features import KaldiFbank, KaldiFbankConfig

    threads = torch.get_num_threads()
    try:
        return torch.from_numpy(KaldiFbank(KaldiFbankConfig()).extract(samples, sampling_rate))
    finally:
        torch.set_num_threads(threads)  # the extractor pins 1 thread for lhotse's worker processes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _audio_reason(path: Path, exc: Exception) -> str:
    """One readable line for an audio file every lhotse backend failed on."""
    try:
        import soundfile

        soundfile.info(str(path))
    except Exception as e:  # soundfile says it best for the formats it knows
        return _first_line(e)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _samples(audio_like, name: str, note: _Notes):
    """Mono float32 samples at 16 kHz from a lhotse Recording or Cut (resampled, channel 0)."""
    import numpy as np

    if audio_like.sampling_rate != SAMPLE_RATE:
        note("resampled", f"{name}: resampling {audio_like.sampling_rate} Hz -> {SAMPLE_RATE} Hz")
        audio_like = audio_like.resample(SAMPLE_RATE)
    try:
        audio = audio_like.load_audio()
    except Exception as e:
        raise AudioError(f"{name}: cannot decode the audio ({_first_line(e)})") from e
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        if audio.shape[0] > 1:
            note("multichannel", f"{name}: {audio.shape[0]} channels, using channel 0 (as the prepare stage does)")
        audio = audio[0]
    if audio.size == 0:
        raise AudioError(f"{name}: no audio samples")
    if not np.isfinite(audio).all():
        raise AudioError(f"{name}: the audio has NaN/inf samples")
    return audio


def read_audio(path: str | Path, note: _Notes | None = None):
    """Samples of one audio file (any format soundfile/lhotse read), 16 kHz mono float32."""
    from lhotse import Recording

    note = note or _Notes(sys.stderr)
    p = Path(path)
    if not p.exists():
        raise AudioError(f"{p}: no such audio file")
    if not p.is_file():
        raise AudioError(f"{p}: not a regular file, expected an audio file")
    if p.stat().st_size == 0:
        raise AudioError(f"{p}: the file is empty (0 bytes), expected audio")
    try:
        rec = Recording.from_file(p)
    except Exception as e:  # every backend raises its own types for unreadable files
        raise AudioError(f"{p}: cannot read audio ({_audio_reason(p, e)})") from e
    if rec.num_samples == 0:
        raise AudioError(f"{p}: no audio samples")
    return _samples(rec, str(p), note)


# --------------------------------------------------------------------------- models


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
    _stream_rt: Any = None

    def check_streaming(self, note: _Notes | None = None) -> None:
        """Raise CliError if this model cannot stream; tell how a fake-quantized model.pt streams."""
        if self.kind == "exported":
            return
        from edgeasr.compression.actquant import float_view, is_quantized

        if is_quantized(self.model):
            if self._stream_rt is None:
                from edgeasr.quantspec import read_spec
                from edgeasr.runtime import IntTransducer

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

    def recognize(self, feats, method: str = "greedy", beam: int = 4, streaming: bool = False,
                  chunk_frames: int = 32) -> list[int]:
        """feats (T, F) float -> token ids (blank removed)."""
        import torch

        from edgeasr.decoding import greedy_search, modified_beam_search

        if feats.dim() != 2 or feats.size(1) != self.feature_dim:
            raise AudioError(f"features of shape {tuple(feats.shape)}, the model takes (T, {self.feature_dim})")
        if feats.size(0) < 7:  # shorter than the subsampling convolutions' receptive field: no encoder frame
            return []
        feats = feats.float()
        with torch.inference_mode():
            if streaming:
                return self._stream(feats, chunk_frames)
            enc, enc_lens = self.model.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]))
            if method == "greedy":
                return list(greedy_search(self.model, enc, enc_lens)[0])
            nbest = modified_beam_search(self.model, enc, enc_lens, beam=beam)[0]
            return list(nbest[0].tokens) if nbest else []

    def _stream(self, feats, chunk_frames: int) -> list[int]:
        import torch

        from edgeasr.decoding import greedy_search_streaming

        self.check_streaming()
        hyps, dec = [[]], None
        if self.kind == "exported" or self._stream_rt is not None:
            rt = self.model if self.kind == "exported" else self._stream_rt
            state = rt.encoder.init_state()
            for i in range(0, feats.size(0), chunk_frames):
                out, state = rt.encoder.infer(rt.encoder.quantize_input(feats[i: i + chunk_frames]), state)
                hyps, dec = greedy_search_streaming(rt, out.unsqueeze(0), torch.tensor([out.size(0)]), dec)
            return list(hyps[0])
        model, state = self.model, None
        for i in range(0, feats.size(0), chunk_frames):
            x = feats[i: i + chunk_frames].unsqueeze(0)
            out, out_lens, state = model.encoder.infer(x, torch.tensor([x.size(1)]), state)
            hyps, dec = greedy_search_streaming(model, out, out_lens, dec)
        return list(hyps[0])

    def transcribe_features(self, feats, **kw) -> str:
        return self.to_text(self.recognize(feats, **kw))


def _describe(head: bytes) -> str:
    if not head:
        return "the file is empty"
    try:
        from edgeasr.export.reader import _what_is

        return _what_is(head)
    except ImportError:  # pragma: no cover - the helper moved
        return f"content starting with {head!r}"


def load_recognizer(model_path: str | Path, tokenizer: str | Path | None = None,
                    note: _Notes | None = None) -> Recognizer:
    """Load MODEL by content (export magic or a torch zip); any problem -> CliError naming the file."""
    from edgeasr.export import MAGIC

    note = note or _Notes(sys.stderr)
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
        return _load_torch(path, tokenizer)
    raise CliError(f"{path}: not a model file ({_describe(head)}); {EXPECTED_MODEL}")


def _load_exported(path: Path, tokenizer, note: _Notes) -> Recognizer:
    from edgeasr.export import ExportFormatError
    from edgeasr.runtime import load_student, tokens_to_text

    try:
        rt = load_student(path)
    except ExportFormatError as e:
        raise CliError(str(e)) from e
    except Exception as e:  # the loader should have said it; never a traceback for a bad file
        raise CliError(f"{path}: cannot load the exported student ({type(e).__name__}: {e})") from e
    if tokenizer is not None:
        note("tokenizer", f"--tokenizer {tokenizer} ignored: {path} carries its own token list")
    tokens = rt.tokens
    dim = int(rt.model_cfg["encoder"].get("input_dim", 80))
    return Recognizer(path, "exported", rt, lambda ids: tokens_to_text(tokens, ids, rt.blank_id), dim,
                      dict(rt.header))


def _load_torch(path: Path, tokenizer) -> Recognizer:
    from edgeasr.data.tokenizer import Tokenizer
    from edgeasr.models.io import load_model

    try:
        model, meta = load_model(path)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from e
    except Exception as e:
        raise CliError(f"{path}: cannot load the model ({type(e).__name__}: {e})") from e
    from edgeasr.compression import restore_fake_quant
    from edgeasr.quantspec import read_spec

    try:
        spec = read_spec(meta, str(path))  # None: an fp32 model
        if spec is not None:
            restore_fake_quant(model, spec).eval()
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
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
    return Recognizer(path, "model.pt", model, tok.decode, int(model.encoder.input_dim), meta)


# --------------------------------------------------------------------------- sets


@dataclass
class Utterance:
    id: str
    ref: str
    features: Callable[[_Notes], Any]  # -> (T, F) tensor, or raises AudioError


def _normalize(text: str | None) -> str:
    from edgeasr.data.cleaning import normalize_transcript

    return normalize_transcript(text, "basic")


def _cut_features(cut, note: _Notes):
    import torch

    if cut.has_features:
        if cut.features.type != "edgeasr-kaldi-fbank":
            note("feature-type", f"{cut.id}: features of type {cut.features.type!r}, not the prepare stage's "
                                 "'edgeasr-kaldi-fbank'; results may not match the pipeline")
        try:
            return torch.from_numpy(cut.load_features())
        except Exception as e:
            raise AudioError(f"{cut.id}: cannot load its features ({type(e).__name__}: {e})") from e
    if cut.has_recording:
        return audio_features(_samples(cut, cut.id, note))
    raise AudioError(f"{cut.id}: the cut has neither features nor a recording")


def _read_cuts(path: Path, note: _Notes) -> list[Utterance]:
    from lhotse import CutSet

    try:
        cuts = CutSet.from_file(path).to_eager()
    except Exception as e:
        raise CliError(f"{path}: not a readable lhotse cuts manifest ({type(e).__name__}: {e})") from e
    utts = []
    for cut in cuts:
        text = cut.supervisions[0].text if getattr(cut, "supervisions", None) else None
        if not text:
            note("unlabeled", f"{cut.id}: no transcript, skipped")
            continue
        utts.append(Utterance(cut.id, _normalize(text), lambda n, c=cut: _cut_features(c, n)))
    return utts


def _read_tsv(path: Path) -> list[Utterance]:
    """``audio_path<TAB>reference`` per line (an ``audio``/``path`` header line and ``#`` comments
    allowed); relative paths are relative to the TSV's folder (as ``data.source=folder`` reads
    them), else to the current directory."""
    utts = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CliError(f"{path}: not a readable UTF-8 TSV ({type(e).__name__}: {e})") from e
    for lineno, row in enumerate(rows, start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and row[0].strip().lower() in ("audio", "path", "audio_path"):
            continue
        if len(row) < 2:
            raise CliError(f"{path}:{lineno}: expected 'audio_path<TAB>reference text', found no tab")
        name = row[0].strip()
        audio = Path(name)
        if not audio.is_absolute() and ((path.parent / audio).exists() or not audio.exists()):
            audio = path.parent / audio
        utts.append(Utterance(name, _normalize("\t".join(row[1:])),
                              lambda n, a=audio: audio_features(read_audio(a, n))))
    return utts


def read_set(path: str | Path, note: _Notes | None = None) -> list[Utterance]:
    """A lhotse cuts manifest (gzip or JSON lines, by content) or a TSV."""
    note = note or _Notes(sys.stderr)
    p = Path(path)
    if not p.is_file():
        raise CliError(f"{p}: test set not found; expected a lhotse cuts manifest (cuts_*.jsonl.gz) "
                       "or a TSV of audio_path<TAB>reference text")
    with open(p, "rb") as f:
        head = f.read(2)
    return _read_cuts(p, note) if head in (b"\x1f\x8b",) or head[:1] in (b"{", b"[") else _read_tsv(p)


def _set_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".tsv", ".txt"):
        name = name.removesuffix(suffix)
    return name.removeprefix("cuts_") or "set"


# --------------------------------------------------------------------------- commands


def _chunk_frames(chunk_ms: float) -> int:
    from edgeasr.data.features import KaldiFbankConfig

    return max(1, int(round(chunk_ms / KaldiFbankConfig().frame_shift_ms)))


def _check_method(method: str, streaming: bool) -> None:
    if method not in ("greedy", "beam"):
        raise CliError(f"unknown decoding method {method!r}; use greedy or beam")
    if streaming and method != "greedy":
        raise CliError("--streaming decodes greedily (modified beam search is offline); use --method greedy")


def transcribe(model: str | Path, audio: Sequence[str | Path], *, streaming: bool = False, chunk_ms: float = 320,
               method: str = "greedy", beam: int = 4, tokenizer: str | Path | None = None,
               out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print ``<path>\\t<text>`` per audio file. Returns 0, or 1 if any file could not be used
    (each reported on ``err``). Raises CliError for an unusable model or options."""
    out, err = out or sys.stdout, err or sys.stderr
    note = _Notes(err)
    _check_method(method, streaming)
    rec = load_recognizer(model, tokenizer, note)
    if streaming:
        rec.check_streaming(note)
    failed = 0
    for a in audio:
        try:
            text = rec.transcribe_features(audio_features(read_audio(a, note)), method=method, beam=beam,
                                           streaming=streaming, chunk_frames=_chunk_frames(chunk_ms))
        except AudioError as e:
            _write(f"edgeasr: error: {e}", err)
            failed += 1
            continue
        print(f"{a}\t{text}", file=out, flush=True)
    if failed:
        _write(f"edgeasr: {failed} of {len(audio)} files could not be transcribed", err)
    return 1 if failed else 0


def score(model: str | Path, test_set: str | Path, *, out_dir: str | Path = ".", method: str = "greedy",
          beam: int = 4, tokenizer: str | Path | None = None, streaming: bool = False, chunk_ms: float = 320,
          out: TextIO | None = None, err: TextIO | None = None, progress: bool | None = None) -> int:
    """Decode SET, print the corpus WER (summed errors / summed reference words) and write
    ``recogs-<set>.txt`` / ``errs-<set>.txt`` into ``out_dir``. Returns 0, or 1 if some utterances
    could not be used (reported; the WER then covers the others only)."""
    from tqdm import tqdm

    from edgeasr.metrics import WerAccumulator

    out, err = out or sys.stdout, err or sys.stderr
    note = _Notes(err, collapse=True)
    _check_method(method, streaming)
    rec = load_recognizer(model, tokenizer, note)
    if streaming:
        rec.check_streaming(note)
    set_path = Path(test_set)
    utts = read_set(set_path, note)
    if not utts:
        raise CliError(f"{set_path}: no utterances with a transcript to score")
    acc, failed = WerAccumulator(), 0
    show = progress if progress is not None else bool(getattr(err, "isatty", lambda: False)())
    for u in tqdm(utts, desc=f"score {set_path.name}", unit="utt", file=err, disable=not show, leave=False):
        try:
            text = rec.transcribe_features(u.features(note), method=method, beam=beam, streaming=streaming,
                                           chunk_frames=_chunk_frames(chunk_ms))
        except AudioError as e:
            _write(f"edgeasr: error: {e}", err)
            failed += 1
            continue
        acc.update([u.ref], [text], [u.id])
    note.summary()
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = _set_name(set_path)
    acc.write_recogs(d / f"recogs-{name}.txt")
    acc.write_errs(d / f"errs-{name}.txt")
    s = acc.summary()
    print(f"%WER {acc.wer:.2f} [ {s['errors']} / {s['words']}, {s['ins']} ins, {s['del']} del, {s['sub']} sub ] "
          f"{s['utts']} utts, {set_path}", file=out, flush=True)
    _write(f"edgeasr: wrote {d / f'recogs-{name}.txt'} and {d / f'errs-{name}.txt'}", err)
    if failed:
        _write(f"edgeasr: {failed} of {len(utts)} utterances could not be used; the WER covers the other "
               f"{len(utts) - failed}", err)
    return 1 if failed else 0


def _positive(kind):
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {s!r}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeasr", description="Transcribe audio or score a test set with an edgeasr model "
        "(any stage's data/<stage>/model.pt or an exported *.edgeasr student).",
        epilog="exit codes: 0 ok, 1 some audio could not be used, 2 bad usage or model/set file")
    sub = p.add_subparsers(dest="command", required=True, metavar="{transcribe,score}")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("model", metavar="MODEL", help="data/<stage>/model.pt or an exported *.edgeasr file")
        sp.add_argument("--method", choices=("greedy", "beam"), default="greedy", help="decoding (default greedy)")
        sp.add_argument("--beam", type=_positive(int), default=4, help="beam size for --method beam (default 4)")
        sp.add_argument("--tokenizer", metavar="PATH", default=None,
                        help=f"sentencepiece model for a model.pt (default {DEFAULT_TOKENIZER}); "
                             "an exported file carries its own tokens")
        sp.add_argument("--streaming", action="store_true",
                        help="run the encoder chunk by chunk with state (LSTM student / exported file; greedy)")
        sp.add_argument("--chunk-ms", type=_positive(float), default=320.0,
                        help="streaming chunk length in ms of features (default 320)")

    t = sub.add_parser("transcribe", help="print '<path>\\t<text>' for each audio file",
                       description="Print '<path>\\t<text>' for each audio file (any rate: resampled to 16 kHz).")
    common(t)
    t.add_argument("audio", metavar="AUDIO", nargs="+", help="audio files (wav, flac, ...)")
    s = sub.add_parser("score", help="WER on a test set, with icefall-style recogs/errs",
                       description="Decode a test set, print the corpus WER and write recogs-<set>.txt / errs-<set>.txt.")
    common(s)
    s.add_argument("set", metavar="SET", help="lhotse cuts manifest (cuts_*.jsonl.gz) or TSV audio_path<TAB>text")
    s.add_argument("--out", metavar="DIR", default=".", help="where recogs/errs go (default: current directory)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = dict(streaming=args.streaming, chunk_ms=args.chunk_ms, method=args.method, beam=args.beam,
                tokenizer=args.tokenizer)
    try:
        if args.command == "transcribe":
            return transcribe(args.model, args.audio, **opts)
        return score(args.model, args.set, out_dir=args.out, progress=args.progress, **opts)
    except CliError as e:
        print(f"edgeasr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
