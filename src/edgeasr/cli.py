"""``edgeasr``: use a trained model outside the pipeline (issue 7, part 4).

    edgeasr transcribe MODEL AUDIO... [--streaming] [--chunk-ms 320] [--method greedy|beam] [--beam 4]
    edgeasr transcribe MODEL AUDIO... --streaming --endpoint [--endpoint-config F] [--end-of-query F]
    edgeasr transcribe MODEL AUDIO... --method beam --context PHRASES.txt [--context-boost B] [--context-end-bonus E] [--context-reserve R]
    edgeasr score MODEL SET [--out DIR] [--method greedy|beam] [--beam 4] [--streaming] [--allow-source-type TYPE]
    edgeasr score MODEL SET --method beam (--context PHRASES.txt | --utterance-context) [--context-boost B]

MODEL is any stage's ``data/<stage>/model.pt`` (tokenizer: ``--tokenizer``, default
``data/prepare/tokenizer/bpe.model``) or an exported student ``*.edgeasr`` (carries its tokens);
the kind is read from the file's first bytes, not its name. A compressed ``model.pt`` gets its
activation fake-quant back, so the numbers are the stage's. SET is a lhotse cuts manifest
(features or recordings) or a TSV ``audio_path<TAB>reference text`` (paths relative to the TSV).
A manifest whose audio or features lhotse would get by running a command or fetching a URL is
refused (exit 2) unless ``--allow-source-type`` names that type.

Audio goes through the prepare stage's feature extractor (:class:`edgeasr.data.features.KaldiFbank`
with its defaults, which are ``prepare.features``), at 16 kHz (other rates are resampled, as the
prepare stage does) on channel 0 (the channel the prepare stage's cuts use).

``--streaming --endpoint`` prints ``<path>\\t<time_s>\\t<event>\\t<text>`` lines instead: every partial
transcript and the speculative / reset / final decisions of the end-pointers (:mod:`edgeasr.endpoint`),
with the rules the evaluate stage chose (``data/evaluate/results/endpoint/rule.json``) and the
prepare stage's end-of-query table.

``--context FILE`` (one phrase per line; blank lines and ``#`` comments skipped) biases modified beam
search towards those phrases by shallow fusion (:mod:`edgeasr.decoding.context`; an exported student
needs the sentencepiece model it was trained with to spell them, ``--tokenizer``, default the prepare
stage's); ``score --utterance-context`` uses each utterance's own list instead, a cuts manifest's
supervision ``custom["context"]`` (as ``test_rare`` carries); an utterance whose list is not a list
of text is reported and skipped. ``--context-boost`` / ``--context-end-bonus`` / ``--context-reserve`` default to the
weights the evaluate stage chose on ``dev_rare`` (README "Context biasing").

Loading the model: :mod:`edgeasr.recognizer`; reading audio and sets: :mod:`edgeasr.audio_input`.

Audio shorter than the model's minimum input (its subsampling and frame stacking, e.g. 11 frames =
0.11 s for a frame-stack-2 student) gives an empty result and a note on stderr.

Exit codes: 0 ok; 1 some audio could not be used (each file reported on stderr in one line, whatever
went wrong, the rest processed); 2 bad usage, or a model / tokenizer / set file that cannot be used
(one line naming the file, no traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence, TextIO

from tqdm import tqdm

from edgeasr.cli_base import (DEFAULT_CONTEXT_BOOST, DEFAULT_CONTEXT_END_BONUS, DEFAULT_CONTEXT_RESERVE,
                               DEFAULT_END_OF_QUERY, DEFAULT_ENDPOINT_CONFIG, DEFAULT_TOKENIZER, AudioError, CliError,
                               Notes, write_line)
from edgeasr.metrics import WerAccumulator


# --------------------------------------------------------------------------- commands


def _check_method(method: str, streaming: bool) -> None:
    if method not in ("greedy", "beam"):
        raise CliError(f"unknown decoding method {method!r}; use greedy or beam")
    if streaming and method != "greedy":
        raise CliError("--streaming decodes greedily (modified beam search is offline); use --method greedy")


def read_phrases(path: str | Path) -> list[str]:
    """A context list file: one phrase per line; blank lines and ``#`` comments skipped."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise CliError(f"{p}: context list not found; expected a text file with one phrase per line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{p}: not a readable UTF-8 context list ({type(e).__name__}: {e})") from e
    phrases = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not phrases:
        raise CliError(f"{p}: the context list holds no phrase (one per line; '#' starts a comment)")
    return phrases


def _check_context(method: str, streaming: bool) -> None:
    if method != "beam" or streaming:
        raise CliError("context biasing works inside modified beam search: use --method beam (offline, no --streaming)")


def _utterance_graph(rec, u, boost: float, end_bonus: float, reserve: int):
    """The utterance's own context list (a cuts manifest's supervision ``custom["context"]``) as a graph."""
    if u.context is None:
        return None
    if not isinstance(u.context, list) or not all(isinstance(p, str) for p in u.context):
        raise AudioError(f"{u.id}: its supervision custom 'context' must be a list of phrases (text), got "
                         f"{type(u.context).__name__}")
    return rec.context_graph(u.context, boost, end_bonus, reserve, name=u.id)


def _set_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".tsv", ".txt"):
        name = name.removesuffix(suffix)
    return name.removeprefix("cuts_") or "set"


def _failure(name: object, e: Exception) -> str:
    """One line for an input that failed: an AudioError says it all; anything else (a bug, a model
    that cannot take this input) is named with its type, and the other inputs go on."""
    if isinstance(e, AudioError):
        return f"edgeasr: error: {e}"
    text = " ".join(str(e).split()) or "no message"
    return f"edgeasr: error: {name}: cannot decode ({type(e).__name__}: {text})"


def _endpoint_setup(config: str | Path | None, end_of_query: str | Path | None):
    from edgeasr.endpoint import EndOfQuery, EndOfQueryError, EndpointConfig, EndpointConfigError

    try:
        return (EndpointConfig.load(config if config is not None else DEFAULT_ENDPOINT_CONFIG),
                EndOfQuery.load(end_of_query if end_of_query is not None else DEFAULT_END_OF_QUERY))
    except (EndpointConfigError, EndOfQueryError) as e:
        raise CliError(str(e)) from e


def transcribe(model: str | Path, audio: Sequence[str | Path], *, streaming: bool = False, chunk_ms: float | None = None,
               method: str = "greedy", beam: int = 4, tokenizer: str | Path | None = None, endpoint: bool = False,
               endpoint_config: str | Path | None = None, end_of_query: str | Path | None = None,
               context: str | Path | None = None, context_boost: float = DEFAULT_CONTEXT_BOOST,
               context_end_bonus: float = DEFAULT_CONTEXT_END_BONUS, context_reserve: int = DEFAULT_CONTEXT_RESERVE,
               out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print ``<path>\\t<text>`` per audio file; with ``endpoint`` (streaming only) instead
    ``<path>\\t<time_s>\\t<event>\\t<text>`` per partial and end-pointer event (modified beam search
    and both end-pointers as ``endpoint_config`` says: the evaluate stage's choice by default).
    Returns 0, or 1 if any file could not be used (each reported on ``err``). Raises CliError for
    an unusable model or options. ``context``: a file of phrases to bias modified beam search towards."""
    # torch and lhotse take seconds to import (measured: `edgeasr --help` 0.1 s CPU without them,
    # 3.4 s with them), so only a command that decodes loads them
    from edgeasr.audio_input import audio_features, chunk_frames, read_audio
    from edgeasr.recognizer import load_recognizer

    out, err = out or sys.stdout, err or sys.stderr
    note = Notes(err)
    if endpoint and not streaming:
        raise CliError("--endpoint needs --streaming (end-pointers decide while the audio streams)")
    _check_method(method, streaming and not endpoint)
    ep = _endpoint_setup(endpoint_config, end_of_query) if endpoint else None
    phrases = read_phrases(context) if context is not None else None
    if phrases is not None:
        _check_context(method, streaming)
    rec = load_recognizer(model, tokenizer, note)
    if streaming:
        rec.check_streaming(note)
    graph = rec.context_graph(phrases, context_boost, context_end_bonus, context_reserve, str(context)) if phrases else None
    chunk = chunk_frames(chunk_ms if chunk_ms is not None else (ep[0].chunk_ms if ep else 320.0))
    failed = 0
    for a in audio:
        try:
            feats = audio_features(read_audio(a, note))
            if ep is not None:
                lines = [f"{a}\t{t:.3f}\t{kind}\t{text}" for t, kind, text in rec.endpoint_events(feats, *ep, chunk, str(a))]
            else:
                lines = [f"{a}\t" + rec.transcribe_features(feats, method=method, beam=beam, streaming=streaming,
                                                             chunk_frames=chunk, name=str(a), context=graph)]
        except Exception as e:  # one file never aborts the others (KeyboardInterrupt still does)
            write_line(_failure(a, e), err)
            failed += 1
            continue
        for line in lines:
            print(line, file=out, flush=True)
    if failed:
        write_line(f"edgeasr: {failed} of {len(audio)} files could not be transcribed", err)
    return 1 if failed else 0


def score(model: str | Path, test_set: str | Path, *, out_dir: str | Path = ".", method: str = "greedy",
          beam: int = 4, tokenizer: str | Path | None = None, streaming: bool = False, chunk_ms: float | None = None,
          out: TextIO | None = None, err: TextIO | None = None, progress: bool | None = None,
          allow_source_types: Sequence[str] = (), context: str | Path | None = None, utterance_context: bool = False,
          context_boost: float = DEFAULT_CONTEXT_BOOST, context_end_bonus: float = DEFAULT_CONTEXT_END_BONUS,
          context_reserve: int = DEFAULT_CONTEXT_RESERVE) -> int:
    """Decode SET, print the corpus WER (summed errors / summed reference words) and write
    ``recogs-<set>.txt`` / ``errs-<set>.txt`` into ``out_dir``. Returns 0, or 1 if some utterances
    could not be used (reported; the WER then covers the others only). A cuts manifest's audio and
    features must be local files or inline bytes unless ``allow_source_types`` adds more types
    (``command``, ``url``, ...): lhotse would run or fetch them. ``context``: one list of phrases for
    every utterance; ``utterance_context``: each utterance's own (a manifest's ``custom["context"]``)."""
    # torch and lhotse: see transcribe
    from edgeasr.audio_input import chunk_frames, read_set
    from edgeasr.recognizer import load_recognizer

    out, err = out or sys.stdout, err or sys.stderr
    note = Notes(err, collapse=True)
    _check_method(method, streaming)
    if context is not None and utterance_context:
        raise CliError("--context (one list for every utterance) and --utterance-context (each its own) exclude each other")
    phrases = read_phrases(context) if context is not None else None
    if phrases is not None or utterance_context:
        _check_context(method, streaming)
    rec = load_recognizer(model, tokenizer, note)
    if streaming:
        rec.check_streaming(note)
    graph = rec.context_graph(phrases, context_boost, context_end_bonus, context_reserve, str(context)) if phrases else None
    set_path = Path(test_set)
    utts = read_set(set_path, note, allow_source_types=("file", "memory", *allow_source_types))
    if not utts:
        raise CliError(f"{set_path}: no utterances with a transcript to score")
    acc, failed = WerAccumulator(), 0
    show = progress if progress is not None else bool(getattr(err, "isatty", lambda: False)())
    for u in tqdm(utts, desc=f"score {set_path.name}", unit="utt", file=err, disable=not show, leave=False):
        try:
            g = _utterance_graph(rec, u, context_boost, context_end_bonus, context_reserve) if utterance_context else graph
            if utterance_context and u.context is None:
                note("no-context", f"{u.id}: no context list in the set; decoded without biasing")
            text = rec.transcribe_features(u.features(note), method=method, beam=beam, streaming=streaming,
                                           chunk_frames=chunk_frames(chunk_ms or 320.0), name=u.id, context=g)
        except Exception as e:  # as in transcribe: one utterance never aborts the set
            write_line(_failure(u.id, e), err)
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
    write_line(f"edgeasr: wrote {d / f'recogs-{name}.txt'} and {d / f'errs-{name}.txt'}", err)
    if failed:
        write_line(f"edgeasr: {failed} of {len(utts)} utterances could not be used; the WER covers the other "
                   f"{len(utts) - failed}", err)
    return 1 if failed else 0


def _bounded(kind, positive: bool):
    what = f"a positive {kind.__name__}" if positive else ("a number >= 0" if kind is float else f"an {kind.__name__} >= 0")

    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not (v > 0 if positive else v >= 0):  # also refuses nan
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    return parse


def _positive(kind):
    return _bounded(kind, positive=True)


_non_negative = _bounded(float, positive=False)


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
        sp.add_argument("--chunk-ms", type=_positive(float), default=None,
                        help="streaming chunk length in ms of features (default 320; with --endpoint the "
                             "configuration's)")

    t = sub.add_parser("transcribe", help="print '<path>\\t<text>' for each audio file",
                       description="Print '<path>\\t<text>' for each audio file (any rate: resampled to 16 kHz).")
    common(t)
    t.add_argument("audio", metavar="AUDIO", nargs="+", help="audio files (wav, flac, ...)")
    t.add_argument("--endpoint", action="store_true",
                   help="with --streaming: print '<path>\\t<time_s>\\t<event>\\t<text>' for every partial and "
                        "end-pointer event (partial, speculative, reset, final; end if the audio ends first)")
    t.add_argument("--endpoint-config", metavar="PATH", default=None,
                   help=f"the end-pointers' rules and stream settings (default {DEFAULT_ENDPOINT_CONFIG}, "
                        "written by the evaluate stage)")
    t.add_argument("--end-of-query", metavar="PATH", default=None,
                   help=f"the end-of-query table (default {DEFAULT_END_OF_QUERY}, written by the prepare stage)")
    _context_args(t)
    s = sub.add_parser("score", help="WER on a test set, with icefall-style recogs/errs",
                       description="Decode a test set, print the corpus WER and write recogs-<set>.txt / errs-<set>.txt.")
    common(s)
    s.add_argument("set", metavar="SET", help="lhotse cuts manifest (cuts_*.jsonl.gz) or TSV audio_path<TAB>text")
    s.add_argument("--out", metavar="DIR", default=".", help="where recogs/errs go (default: current directory)")
    s.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    # Off by default: a manifest from elsewhere could otherwise run any shell command (issue 15).
    s.add_argument("--allow-source-type", metavar="TYPE", action="append", default=[],
                   dest="allow_source_types",
                   help="also read SET's audio/features of this lhotse source type (command: runs a shell "
                        "command, url: fetches); only for manifests you trust. Repeatable")
    _context_args(s)
    s.add_argument("--utterance-context", action="store_true",
                   help="bias each utterance towards its own list: a cuts manifest's supervision custom "
                        "'context' (as test_rare carries); needs --method beam")
    return p


def _context_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--context", metavar="FILE", default=None,
                    help="bias modified beam search towards these phrases (one per line; shallow fusion; "
                         "needs --method beam)")
    sp.add_argument("--context-boost", type=_positive(float), default=DEFAULT_CONTEXT_BOOST,
                    help=f"log-score per BPE piece of a matching phrase (default {DEFAULT_CONTEXT_BOOST}, the "
                         "evaluate stage's choice on dev_rare)")
    sp.add_argument("--context-end-bonus", type=_non_negative, default=DEFAULT_CONTEXT_END_BONUS,
                    help=f"log-score per completed phrase (default {DEFAULT_CONTEXT_END_BONUS})")
    sp.add_argument("--context-reserve", type=_bounded(int, positive=False), default=DEFAULT_CONTEXT_RESERVE,
                    help="beam slots kept for hypotheses ranked without the boost of an unfinished phrase, so "
                         f"false starts cannot crowd the beam (default {DEFAULT_CONTEXT_RESERVE})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = dict(streaming=args.streaming, chunk_ms=args.chunk_ms, method=args.method, beam=args.beam,
                tokenizer=args.tokenizer, context=args.context, context_boost=args.context_boost,
                context_end_bonus=args.context_end_bonus, context_reserve=args.context_reserve)
    try:
        if args.command == "transcribe":
            return transcribe(args.model, args.audio, endpoint=args.endpoint, endpoint_config=args.endpoint_config,
                              end_of_query=args.end_of_query, **opts)
        return score(args.model, args.set, out_dir=args.out, progress=args.progress,
                     allow_source_types=args.allow_source_types, utterance_context=args.utterance_context, **opts)
    except CliError as e:
        msg = " ".join(str(e).split())  # the contract is one line, whatever text a library put in it
        print(f"edgeasr {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
