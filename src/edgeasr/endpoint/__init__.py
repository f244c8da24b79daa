"""End-pointing on the device (issue 16): when has the user finished the request?

:class:`EndOfQuery` (how complete the words so far look, a table counted on the train text),
:class:`EndpointRule` and :func:`simulate` (a speculative and a final end-pointer over decision
points), :func:`stream_decisions` (the streaming student with modified beam search, one decision
point per chunk), :func:`event_lines` (what ``edgeasr transcribe --streaming --endpoint`` prints),
:class:`EndpointConfig` (the rules and stream settings the evaluate stage chose). Device side: never imports training, compression or stage code.
"""

from .config import EndpointConfig, EndpointConfigError
from .eoq import EndOfQuery, EndOfQueryError
from .rules import EndpointRule, Events, Point, simulate
from .stream import EncoderStream, StreamTrace, event_lines, stream_decisions

__all__ = ["EncoderStream", "EndOfQuery", "EndOfQueryError", "EndpointConfig", "EndpointConfigError", "EndpointRule",
           "Events", "Point", "StreamTrace", "event_lines", "simulate", "stream_decisions"]
