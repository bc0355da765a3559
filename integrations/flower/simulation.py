"""Flower's simulation runtime (``flwr.simulation.run_simulation``) with an in-process backend and
modelled links.

Simulation mode runs the same instrumented ServerApp and ClientApp as deployment mode, but the
SuperLink, the grid (``InMemoryGrid``) and the virtual SuperNodes live in one process. Flower's only
backend is Ray (``flwr[simulation]``); :class:`InProcessBackend` implements Flower's ``Backend`` ABC with
a thread pool instead, and is what the simulation engine instantiates while :func:`run` runs.

The backend plays the SuperNode's part of the recording: around each message it records
``recv_start``/``recv_end`` and ``send_start``/``send_end`` and, between them, sleeps for the time the
message would take over the client's link profile (:meth:`flsim.links.LinkProfile.model_seconds`), so
the round's phases have the same meaning as in deployment mode, with modelled instead of emulated
transfers (no root needed).

``python -m integrations.flower.simulation --out DIR --clients N --rounds R [--profile P] ...``
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce.backend import Backend, BackendConfig

from flsim.links import LinkProfile, load_profile
from flsim.recorder import RoundRecorder
from integrations.flower.mods import message_bytes

_RAY_BACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"


class InProcessBackend(Backend):
    """Runs ClientApps in this process (``num_workers`` threads), modelling each node's link."""

    recorder: RoundRecorder | None = None
    profile: LinkProfile | None = None

    def __init__(self, backend_config: BackendConfig) -> None:
        super().__init__(backend_config)
        self.workers = int(backend_config.get("init_args", {}).get("num_cpus", 0) or 0) or 1
        self.app_fn: Callable[[], ClientApp] | None = None
        self._lock = threading.Lock()

    def build(self, app_fn: Callable[[], ClientApp]) -> None:
        self.app_fn = app_fn

    @property
    def num_workers(self) -> int:
        return self.workers

    def is_worker_idle(self) -> bool:
        return True

    def terminate(self) -> None:
        pass

    def process_message(self, message: Message, context: Context) -> tuple[Message, Context]:
        if self.app_fn is None:
            raise RuntimeError("InProcessBackend.build() was not called before process_message()")
        msg_id = message.metadata.message_id
        self._transfer(message, msg_id, "down", "recv_start", "recv_end")
        reply = self.app_fn()(message, context)
        self._transfer(reply, msg_id, "up", "send_start", "send_end")
        return reply, context

    def _transfer(self, message: Message, msg_id: str, direction: str, start: str, end: str) -> None:
        """Model one message crossing the link: marks around a sleep of the profile's transfer time."""
        if self.recorder is not None:
            self.recorder.mark(start, msg=msg_id)
        nbytes = message_bytes(message)
        if self.profile is not None:
            time.sleep(self.profile.model_seconds(nbytes, direction))
        if self.recorder is not None:
            self.recorder.mark(end, msg=msg_id, bytes=nbytes)


def run(out: Path, clients: int, rounds: int, profile: LinkProfile | None, settings: dict[str, Any]) -> None:
    """Run the instrumented FedAvg in Flower's simulation runtime; events go to ``out/events``."""
    from flwr.simulation import run_simulation

    from integrations.flower.app import make_apps

    events = out / "events"
    events.mkdir(parents=True, exist_ok=True)
    server_app, client_app = make_apps({**settings, "num-server-rounds": rounds, "min-nodes": clients,
                                        "flsim-events": str(events / "server.jsonl")})
    InProcessBackend.recorder = RoundRecorder("node", events / "nodes.jsonl", host=socket.gethostname())
    InProcessBackend.profile = profile
    shim = types.ModuleType(_RAY_BACKEND_MODULE)
    shim.RayBackend = InProcessBackend  # type: ignore[attr-defined]
    saved = sys.modules.get(_RAY_BACKEND_MODULE)
    sys.modules[_RAY_BACKEND_MODULE] = shim
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                       backend_name="flsim-inprocess", backend_config={"init_args": {"num_cpus": clients}})
    finally:
        if saved is not None:
            sys.modules[_RAY_BACKEND_MODULE] = saved
        else:
            sys.modules.pop(_RAY_BACKEND_MODULE, None)
        InProcessBackend.recorder.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m integrations.flower.simulation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--profile", default=None, help="link profile to model (default: no link time)")
    p.add_argument("--settings", default="{}", help="JSON object of app settings (samples, width, ...)")
    a = p.parse_args(argv)
    run(a.out, a.clients, a.rounds, load_profile(a.profile) if a.profile else None, json.loads(a.settings))


if __name__ == "__main__":
    main()
