"""End-pointing on the device (issue 16): when has the user finished the request?

:class:`EndOfQuery` (how complete the words so far look, a table counted on the train text),
:class:`EndpointRule` and :func:`simulate` (a speculative and a final end-pointer over decision
points), :func:`stream_decisions` (the streaming student with modified beam search, one decision
point per chunk). Device side: never imports training, compression or stage code.
"""

from .eoq import EndOfQuery, EndOfQueryError
from .rules import EndpointRule, Events, Point, simulate
from .stream import EncoderStream, StreamTrace, stream_decisions

__all__ = ["EncoderStream", "EndOfQuery", "EndOfQueryError", "EndpointRule", "Events", "Point", "StreamTrace",
           "simulate", "stream_decisions"]
