"""ClientApp mod that timestamps a client's handling of each message and returns the marks in the reply.

The marks travel back in the reply as a ``ConfigRecord`` under :data:`RECORD_KEY`, so they reach the
server over Flower's own path, from any host; the server side (:class:`InstrumentedGrid`) logs them.
Application code adds the inner boundaries with :func:`flsim.recorder.mark_client`::

    state = msg.content["arrays"].to_torch_state_dict(); model.load_state_dict(state)
    mark_client("deserialized")
    train(model, ...)
    mark_client("computed")
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from flsim.recorder import RoundRecorder, client_recording, process_host

logger = logging.getLogger(__name__)

RECORD_KEY = "flsim"
_HOST, _CLOCK = process_host()


def message_bytes(msg: Message) -> int:
    """Bytes of a message's records (arrays, metrics, configs) as Flower counts them."""
    return int(sum(record.count_bytes() for record in msg.content.values()))


def flsim_client_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Record ``app_enter``, ``deserialized``, ``computed``, ``app_exit`` for ``msg`` and attach them.

    Boundaries the application does not mark collapse onto their neighbours (``deserialized`` onto
    ``app_enter``, ``computed`` onto ``app_exit``), so the phases still tile the handler's time.
    """
    pid = ctxt.node_config.get("partition-id")
    label = str(ctxt.node_config.get("flsim-client") or (f"client{pid}" if pid is not None else ctxt.node_id))
    rec = RoundRecorder("client", clock=_CLOCK)
    enter = rec.mark("app_enter")["t"]
    with client_recording(rec):
        reply = call_next(msg, ctxt)
    marks = {e["ev"]: e["t"] for e in rec.events}
    exit_t = rec.clock()
    if reply.has_error():
        return reply
    reply.content[RECORD_KEY] = ConfigRecord({
        "app_enter": enter,
        "deserialized": marks.get("deserialized", enter),
        "computed": marks.get("computed", exit_t),
        "app_exit": exit_t,
        "client": label,
        "host": _HOST,
        "bytes_in": message_bytes(msg),
        "bytes_out": message_bytes(reply),
    })
    return reply
