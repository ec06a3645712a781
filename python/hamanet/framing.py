"""Native framing: the stream cut into messages in Rust, handed over many per call.

Pass one of these as ``Server(handler, framing=...)`` / ``Client(handler, framing=...)``,
or set it as the handler class's ``framing`` attribute. The handler then receives whole
messages instead of ``on_recv``: ``on_messages(session, messages)`` with every message of
a wakeup as a list (one Python call however many arrived), or else ``on_message(session,
message)`` once per message. ``session.write_frame(payload)`` sends one message, adding
the header or delimiter.

A partial message waits in Rust for the rest. A message longer than ``max_length`` (or a
bad length header) closes the session before its bytes are buffered: ``on_close``
receives a ``hamanet.FramingError``, after every complete message before it was delivered.

The framers are native objects: their arguments are checked where the framing runs, and
they cannot be changed once made.
"""

from __future__ import annotations

from ._hamanet import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from ._hamanet import DEFAULT_MAX_MESSAGE as DEFAULT_MAX_MESSAGE
from ._hamanet import MAX_MESSAGE as MAX_MESSAGE
from ._hamanet import Delimiter, FixedSize, Framing, LengthPrefixed

__all__ = ["Delimiter", "FixedSize", "Framing", "LengthPrefixed"]
