"""Server-side instrumentation: a Strategy wrapper that marks stages, and a Grid wrapper that marks pushes
and pulls.

Call order in one round of ``Strategy.start`` (flwr 1.42), with the events recorded::

    configure_train   -> round_start, stage_start(train)   (after node sampling, which may block)
    grid.send_and_receive -> push_end per message; per poll: pull_start, reply_received per reply
    aggregate_train   -> aggregate_start, aggregate_end
    configure_evaluate, send_and_receive, aggregate_evaluate  (same, stage "evaluate") -> round_end

The Grid wrapper re-implements ``send_and_receive`` with Flower's own semantics (push all, then pull
every ``poll_interval`` seconds, 3 s in flwr 1.42) so that every pull can be timed; it delegates every
transport call to the wrapped grid.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flsim.recorder import RoundRecorder
from integrations.flower.mods import RECORD_KEY, message_bytes

logger = logging.getLogger(__name__)

FLOWER_SERVER_POLL_S = 3.0
CLIENT_MARKS = ("app_enter", "deserialized", "computed", "app_exit")


@dataclass
class ServerInstrument:
    """What the strategy and grid wrappers share: the recorder and the current round and stage."""

    recorder: RoundRecorder
    round: int = 0
    stage: str = "train"
    node_labels: dict[int, str] = field(default_factory=dict)

    @classmethod
    def to_file(cls, path: str) -> ServerInstrument:
        """Record server events (and clients' marks) to the JSON-lines file ``path``."""
        return cls(RoundRecorder("server", path, host=socket.gethostname()))

    def mark(self, ev: str, **keys: object) -> None:
        self.recorder.mark(ev, round=self.round, stage=self.stage, **keys)


class InstrumentedGrid(Grid):
    """Delegates to ``grid``; times pushes and each pull (see the module docstring)."""

    def __init__(self, grid: Grid, instrument: ServerInstrument,
                 poll_interval: float = FLOWER_SERVER_POLL_S) -> None:
        super().__init__()
        self.inner = grid
        self.instrument = instrument
        self.poll_interval = poll_interval

    # Plain delegation -------------------------------------------------------------------------------
    def set_run(self, run):
        return self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for msg, msg_id in zip(messages, ids):
            if msg_id:
                self.instrument.mark("push_end", msg=msg_id, node=str(msg.metadata.dst_node_id),
                                     bytes=message_bytes(msg))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        t0 = time.time()
        replies = list(self.inner.pull_messages(message_ids))
        for reply in replies:
            self._log_reply(reply, t0)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = {i for i in self.push_messages(messages) if i}
        deadline = time.time() + (timeout if timeout is not None else 0.0)
        out: list[Message] = []
        while timeout is None or time.time() < deadline:
            replies = list(self.pull_messages(list(pending)))
            out.extend(replies)
            pending.difference_update(r.metadata.reply_to_message_id for r in replies)
            if not pending:
                break
            time.sleep(self.poll_interval)
        if pending:
            logger.warning("round %d %s: %d repl(ies) missing after %.0f s", self.instrument.round,
                           self.instrument.stage, len(pending), timeout or 0)
        return out

    def _log_reply(self, reply: Message, pulled_at: float) -> None:
        msg_id = reply.metadata.reply_to_message_id
        if reply.has_error():
            logger.warning("reply to %s is an error: %s", msg_id, reply.error)
            return
        self.instrument.mark("pull_start", t=pulled_at, msg=msg_id)
        self.instrument.mark("reply_received", msg=msg_id, bytes=message_bytes(reply))
        marks = reply.content.config_records.get(RECORD_KEY)
        if marks is None:
            logger.warning("reply to %s carries no %r record: is flsim_client_mod installed?", msg_id, RECORD_KEY)
            return
        client = str(marks["client"])
        self.instrument.node_labels[reply.metadata.src_node_id] = client
        for ev in CLIENT_MARKS:
            self.instrument.recorder.mark(ev, t=float(marks[ev]), msg=msg_id, client=client, src="client",
                                          host=str(marks["host"]), round=self.instrument.round,
                                          stage=self.instrument.stage,
                                          bytes=int(marks["bytes_in"] if ev == "app_enter" else marks["bytes_out"]))


class InstrumentedStrategy(Strategy):
    """Wraps any flwr 1.42 message-based strategy; marks stage boundaries, delegates every decision."""

    def __init__(self, strategy: Strategy, instrument: ServerInstrument) -> None:
        self.inner = strategy
        self.instrument = instrument

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.instrument.round, self.instrument.stage = server_round, "train"
        self.instrument.mark("round_start")
        self.instrument.mark("stage_start")
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        self.instrument.mark("aggregate_start")
        try:
            return self.inner.aggregate_train(server_round, replies)
        finally:
            self.instrument.mark("aggregate_end")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_evaluate(server_round, arrays, config, grid))
        self.instrument.round, self.instrument.stage = server_round, "evaluate"
        self.instrument.mark("stage_start")
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        self.instrument.mark("aggregate_start")
        try:
            return self.inner.aggregate_evaluate(server_round, replies)
        finally:
            self.instrument.mark("aggregate_end")
            self.instrument.mark("round_end")
