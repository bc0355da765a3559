"""Assemble recorded events into contiguous phases per round, stage and client.

A round has two *stages* (``train`` then ``evaluate``), each one message exchange per client. On one
client's path a stage is cut by the boundary events below; phase *i* lasts from boundary *i-1* to
boundary *i*, so the phases of a stage tile it without gaps or overlap and, with the server's own time
between stages (``server_other``), sum exactly to the round:

==================  =========================  ===============================================
phase               ends at event (source)     what it holds
==================  =========================  ===============================================
server_serialize    ``push_end`` (server)      build + serialize messages, push to the link
downlink_poll       ``recv_start`` (node)      waiting for the node's next poll (Flower polls)
downlink            ``recv_end`` (node)        message and its arrays over the node's link
client_dispatch     ``app_enter`` (client)     node hands the message to the client app
client_deserialize  ``deserialized`` (client)  arrays -> tensors, load into the model
train / evaluate    ``computed`` (client)      local training (train stage) or evaluation
client_serialize    ``app_exit`` (client)      tensors -> arrays, reply built
client_handoff      ``send_start`` (node)      client app -> node, node's wait for the reply
uplink              ``send_end`` (node)        reply and its arrays over the node's link
server_poll_wait    ``pull_start`` (server)    the server's poll that finds the reply
server_deserialize  ``reply_received`` (server) pull from the server's store, inflate
straggler_wait      ``aggregate_start``        waiting for the slowest client
aggregation         ``aggregate_end``          strategy aggregation
==================  =========================  ===============================================

Events from another host are shifted by the estimated clock offset first. Cross-process boundaries
can be recorded slightly out of order (a node may start its poll before the server's push call
returns); a boundary earlier than the previous one is clamped to it and counted in ``clamped``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from flsim.clock import OffsetEstimate, estimate_offset
from flsim.errors import RecordError
from flsim.recorder import Event

STAGES = ("train", "evaluate")

#: (phase, boundary event that ends it); ``compute`` is renamed to the stage's name.
CHAIN: tuple[tuple[str, str], ...] = (
    ("server_serialize", "push_end"),
    ("downlink_poll", "recv_start"),
    ("downlink", "recv_end"),
    ("client_dispatch", "app_enter"),
    ("client_deserialize", "deserialized"),
    ("compute", "computed"),
    ("client_serialize", "app_exit"),
    ("client_handoff", "send_start"),
    ("uplink", "send_end"),
    ("server_poll_wait", "pull_start"),
    ("server_deserialize", "reply_received"),
)

#: Every phase name in round order (``train``/``evaluate`` in place of ``compute``).
PHASES: tuple[str, ...] = (
    "server_serialize", "downlink_poll", "downlink", "client_dispatch", "client_deserialize", "train",
    "evaluate", "client_serialize", "client_handoff", "uplink", "server_poll_wait", "server_deserialize",
    "straggler_wait", "aggregation", "server_other")

#: Phases whose record carries the bytes of the message that crossed at that point.
BYTE_PHASES = ("server_serialize", "downlink", "uplink", "server_deserialize")

#: Phases that are Flower's polling rather than transport or compute.
POLLING_PHASES = ("downlink_poll", "server_poll_wait")

#: Event names the integration must emit (server, node, client).
EVENTS = ("round_start", "stage_start", "aggregate_start", "aggregate_end", "round_end") + tuple(
    e for _, e in CHAIN)

NODE_EVENTS = ("recv_start", "recv_end", "send_start", "send_end")
CLIENT_EVENTS = ("app_enter", "deserialized", "computed", "app_exit")
SERVER_MSG_EVENTS = ("push_end", "pull_start", "reply_received")


@dataclass(frozen=True)
class PhaseRecord:
    """One phase of one client's path through one stage of one round (times on the server clock)."""

    round: int
    client: str
    stage: str
    phase: str
    start: float
    seconds: float
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for CSV/JSON."""
        return asdict(self)


@dataclass
class RoundTimeline:
    """All phases of one round; ``seconds`` is the server's round time (``round_start`` to ``round_end``)."""

    round: int
    start: float
    seconds: float
    records: list[PhaseRecord] = field(default_factory=list)
    clamped: int = 0

    def clients(self) -> list[str]:
        """Client labels in this round, sorted."""
        return sorted({r.client for r in self.records})

    def client_phases(self, client: str) -> dict[str, float]:
        """Seconds per phase for ``client``, summed over stages, in :data:`PHASES` order."""
        out = dict.fromkeys(PHASES, 0.0)
        for r in self.records:
            if r.client == client:
                out[r.phase] += r.seconds
        return out

    def mean_phases(self) -> dict[str, float]:
        """Seconds per phase averaged over clients."""
        clients = self.clients()
        sums = dict.fromkeys(PHASES, 0.0)
        for c in clients:
            for p, s in self.client_phases(c).items():
                sums[p] += s
        return {p: s / max(len(clients), 1) for p, s in sums.items()}

    def straggler(self) -> str | None:
        """The client whose train-stage reply arrived last (the one the others waited for)."""
        last = {r.client: r.start for r in self.records if r.stage == "train" and r.phase == "straggler_wait"}
        return max(last, key=last.__getitem__) if last else None


def _index(events: Iterable[Event]) -> tuple[dict[tuple[int, str], dict[str, float]],
                                              dict[str, dict[str, Event]], dict[int, dict[str, float]]]:
    stage_ev: dict[tuple[int, str], dict[str, float]] = defaultdict(dict)
    msg_ev: dict[str, dict[str, Event]] = defaultdict(dict)
    round_ev: dict[int, dict[str, float]] = defaultdict(dict)
    for e in events:
        name = e["ev"]
        if name in ("round_start", "round_end"):
            round_ev[int(e["round"])][name] = float(e["t"])
        elif name in ("stage_start", "aggregate_start", "aggregate_end"):
            stage_ev[(int(e["round"]), str(e["stage"]))][name] = float(e["t"])
        elif name in NODE_EVENTS or name in CLIENT_EVENTS or name in SERVER_MSG_EVENTS:
            if "msg" not in e:
                raise RecordError(f"event {name!r} needs the message id key 'msg', found {e!r}")
            if name in msg_ev[e["msg"]]:
                raise RecordError(f"event {name!r} recorded twice for message {e['msg']!r}")
            msg_ev[e["msg"]][name] = e
    return stage_ev, msg_ev, round_ev


def clock_offsets(events: Sequence[Event]) -> dict[str, OffsetEstimate]:
    """Per client host, the offset of its clock from the server's, from each message exchange.

    Exchange *k*: ``t1`` = server ``push_end``... more precisely the stage start (the message exists
    from then on), ``t2`` = node ``recv_end``, ``t3`` = node ``send_start``, ``t4`` = server
    ``reply_received``.
    """
    stage_ev, msg_ev, _ = _index(events)
    per_host: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for evs in msg_ev.values():
        if not all(k in evs for k in ("push_end", "recv_end", "send_start", "reply_received")):
            continue
        push = evs["push_end"]
        t1 = stage_ev.get((int(push["round"]), str(push["stage"])), {}).get("stage_start", float(push["t"]))
        per_host[str(evs["recv_end"].get("host", "?"))].append(
            (t1, float(evs["recv_end"]["t"]), float(evs["send_start"]["t"]), float(evs["reply_received"]["t"])))
    return {host: estimate_offset(x) for host, x in per_host.items()}


def assemble(events: Sequence[Event], server_host: str | None = None) -> list[RoundTimeline]:
    """Turn events into one :class:`RoundTimeline` per round (see the module docstring).

    ``server_host``: hostname of the server; node/client events from any other host are shifted by the
    estimated offset of that host's clock. ``None`` takes the host of the first server event.
    """
    events = list(events)
    if server_host is None:
        server_host = next((str(e.get("host")) for e in events if e.get("src") == "server"), None)
    offsets = {h: o.offset for h, o in clock_offsets(events).items() if h != server_host}
    if offsets:
        events = [dict(e, t=float(e["t"]) - offsets[str(e.get("host"))])
                  if e.get("src") in ("node", "client") and str(e.get("host")) in offsets else e for e in events]
    stage_ev, msg_ev, round_ev = _index(events)
    by_stage: dict[tuple[int, str], list[dict[str, Event]]] = defaultdict(list)
    for msg, evs in msg_ev.items():
        push = evs.get("push_end")
        if push is None:
            raise RecordError(f"message {msg!r} has events {sorted(evs)} but no server 'push_end'")
        by_stage[(int(push["round"]), str(push["stage"]))].append(evs)

    timelines = []
    for rnd in sorted(round_ev):
        rev = round_ev[rnd]
        if "round_start" not in rev or "round_end" not in rev:
            raise RecordError(f"round {rnd} needs 'round_start' and 'round_end', found {sorted(rev)}")
        tl = RoundTimeline(round=rnd, start=rev["round_start"], seconds=rev["round_end"] - rev["round_start"])
        clients = sorted({_label(evs) for st in STAGES for evs in by_stage[(rnd, st)]})
        cursor = dict.fromkeys(clients, rev["round_start"])
        for stage in STAGES:
            sev = stage_ev.get((rnd, stage))
            if sev is None:
                continue
            missing = {"stage_start", "aggregate_start", "aggregate_end"} - set(sev)
            if missing:
                raise RecordError(f"round {rnd} stage {stage!r} lacks server events {sorted(missing)}")
            seen = set()
            for evs in by_stage[(rnd, stage)]:
                client = _label(evs)
                seen.add(client)
                tl.clamped += _client_stage(tl, rnd, stage, client, cursor, sev, evs)
            for client in clients:
                if client not in seen:  # not sampled this stage: it waits
                    _add(tl, rnd, client, stage, "straggler_wait", cursor, sev["aggregate_start"])
                    _add(tl, rnd, client, stage, "aggregation", cursor, sev["aggregate_end"])
        for client in clients:
            _add(tl, rnd, client, "round", "server_other", cursor, rev["round_end"])
        timelines.append(tl)
    return timelines


def _label(evs: dict[str, Event]) -> str:
    """A client's label: what its app reported (``client``), else the server's node id."""
    return str(evs.get("app_enter", {}).get("client") or evs["push_end"].get("node"))


def _add(tl: RoundTimeline, rnd: int, client: str, stage: str, phase: str, cursor: dict[str, float],
         end: float, nbytes: int = 0) -> int:
    start = cursor[client]
    clamped = int(end < start - 1e-3)
    end = max(end, start)
    tl.records.append(PhaseRecord(rnd, client, stage, phase, start, end - start, nbytes))
    cursor[client] = end
    return clamped


def _client_stage(tl: RoundTimeline, rnd: int, stage: str, client: str, cursor: dict[str, float],
                  sev: dict[str, float], evs: dict[str, Event]) -> int:
    missing = [e for _, e in CHAIN if e not in evs]
    if missing:
        raise RecordError(f"round {rnd} stage {stage!r} client {client!r}: missing events {missing} "
                          f"(message {evs['push_end'].get('msg')!r})")
    clamped = _add(tl, rnd, client, stage, "server_other", cursor, sev["stage_start"])
    for phase, boundary in CHAIN:
        ev = evs[boundary]
        name = stage if phase == "compute" else phase
        nbytes = int(ev.get("bytes", 0) or 0) if phase in BYTE_PHASES else 0
        clamped += _add(tl, rnd, client, stage, name, cursor, float(ev["t"]), nbytes)
    clamped += _add(tl, rnd, client, stage, "straggler_wait", cursor, sev["aggregate_start"])
    clamped += _add(tl, rnd, client, stage, "aggregation", cursor, sev["aggregate_end"])
    return clamped


def check_sums(timelines: Sequence[RoundTimeline], tolerance: float = 1e-6) -> None:
    """Raise :class:`RecordError` unless every client's phases sum to its round's time."""
    for tl in timelines:
        for c in tl.clients():
            total = math.fsum(tl.client_phases(c).values())
            if abs(total - tl.seconds) > tolerance:
                raise RecordError(f"round {tl.round} client {c}: phases sum to {total:.6f} s, the round "
                                  f"took {tl.seconds:.6f} s")
