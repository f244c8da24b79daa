"""The integer runtime: the compressed student in integers, as an int8 NPU runs it.

Reads the export format (:mod:`edgeasr.export`) and the compression spec
(:mod:`edgeasr.quantspec`); counts its work per layer (``IntTransducer.stats``) for the NPU
emulator (:mod:`edgeasr.emulator.npu`). Never imports the training side (``compression``, ``training``).
"""

from .ops import LayerStats, QWeight
from .student import MAX_SYM_PER_FRAME, load_student, tokens_to_text
from .transducer import EncoderState, IntTransducer

__all__ = ["MAX_SYM_PER_FRAME", "EncoderState", "IntTransducer", "LayerStats", "QWeight", "load_student", "tokens_to_text"]
