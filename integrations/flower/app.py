"""The FedAvg app that ``flsim run`` deploys: SqueezeNet-like CNN on synthetic CIFAR-10-shaped data.

:func:`make_apps` builds a (ServerApp, ClientApp) pair; ``settings`` given there win over the run config
(simulation mode passes them this way, deployment mode through the generated app's run config).
Config keys (``[tool.flwr.app.config]`` of the generated app, see :mod:`flsim.runner`):
``num-server-rounds``, ``min-nodes``, ``samples``, ``epochs``, ``batch-size``, ``lr``, ``width``,
``packing`` (``tensors`` or ``flat``, see :func:`flsim.model.transport_state`), ``threads`` (torch
intra-op threads per ClientApp, default 1: one core per client, as on the paper's single-board clients;
more oversubscribe a shared host), ``flsim-events`` (server
JSON-lines file), ``flsim-poll`` (server poll interval, s), ``timeout``.
Node config: ``partition-id`` (which synthetic shard), ``flsim-client`` (label in the results).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flsim.model import (
    SqueezeNetCifar,
    SyntheticCifar,
    evaluate,
    load_transport_state,
    train,
    transport_state,
)
from flsim.recorder import mark_client
from integrations.flower.mods import flsim_client_mod
from integrations.flower.strategy import (
    FLOWER_SERVER_POLL_S,
    InstrumentedGrid,
    InstrumentedStrategy,
    ServerInstrument,
)


def make_apps(settings: dict[str, Any] | None = None) -> tuple[ServerApp, ClientApp]:
    """The instrumented FedAvg ServerApp and ClientApp."""
    fixed = dict(settings or {})
    client_app = ClientApp(mods=[flsim_client_mod])
    server_app = ServerApp()

    def config(context: Context) -> dict[str, Any]:
        return {**dict(context.run_config), **fixed}

    def packing(cfg: dict[str, Any]) -> str:
        return str(cfg.get("packing", "tensors"))

    def setup(msg: Message, context: Context) -> tuple[SqueezeNetCifar, SyntheticCifar, dict[str, Any]]:
        cfg = config(context)
        torch.set_num_threads(int(cfg.get("threads", 1)))
        model = SqueezeNetCifar(width=float(cfg.get("width", 1.0)))
        load_transport_state(model, msg.content["arrays"].to_torch_state_dict(), packing(cfg))
        data = SyntheticCifar(samples=int(cfg.get("samples", 64)),
                              partition=int(context.node_config.get("partition-id", 0)))
        mark_client("deserialized")
        return model, data, cfg

    @client_app.train()
    def client_train(msg: Message, context: Context) -> Message:
        model, data, cfg = setup(msg, context)
        loss = train(model, data, epochs=int(cfg.get("epochs", 1)), batch_size=int(cfg.get("batch-size", 32)),
                     lr=float(msg.content["config"].get("lr", cfg.get("lr", 0.01))))
        mark_client("computed")
        arrays = ArrayRecord(transport_state(model, packing(cfg)))
        content = RecordDict({"arrays": arrays,
                              "metrics": MetricRecord({"train_loss": loss, "num-examples": data.samples})})
        return Message(content=content, reply_to=msg)

    @client_app.evaluate()
    def client_evaluate(msg: Message, context: Context) -> Message:
        model, data, _ = setup(msg, context)
        loss, acc = evaluate(model, data)
        mark_client("computed")
        content = RecordDict({"metrics": MetricRecord({"eval_loss": loss, "eval_acc": acc,
                                                       "num-examples": data.samples})})
        return Message(content=content, reply_to=msg)

    @server_app.main()
    def server_main(grid: Grid, context: Context) -> None:
        cfg = config(context)
        nodes = int(cfg.get("min-nodes", 2))
        instrument = ServerInstrument.to_file(str(cfg["flsim-events"]))
        strategy = InstrumentedStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=nodes,
                                               min_evaluate_nodes=nodes, min_available_nodes=nodes), instrument)
        # Flower's own pull interval of this grid (HTTP: 3 s, in-memory simulation: 0.1 s) unless overridden
        poll = float(cfg.get("flsim-poll", getattr(grid, "pull_interval", FLOWER_SERVER_POLL_S)))
        grid = InstrumentedGrid(grid, instrument, poll_interval=poll)
        model = SqueezeNetCifar(width=float(cfg.get("width", 1.0)))
        t0 = time.time()
        initial = ArrayRecord(transport_state(model, packing(cfg)))
        strategy.start(grid=grid, initial_arrays=initial,
                       num_rounds=int(cfg.get("num-server-rounds", 1)), timeout=float(cfg.get("timeout", 600)),
                       train_config=ConfigRecord({"lr": float(cfg.get("lr", 0.01))}))
        instrument.recorder.mark("run_end", seconds=time.time() - t0)
        instrument.recorder.close()

    return server_app, client_app


server_app, client_app = make_apps()
