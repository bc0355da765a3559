"""Flower (flwr 1.42) glue for flsim: a ClientApp mod, a strategy/grid wrapper, an instrumented SuperNode
launcher and the FedAvg app that ``flsim run`` deploys. Importing this package needs ``flwr`` installed
(``pip install trainfra-toolkit[flower]``); flsim's core never imports it."""

from integrations.flower.mods import flsim_client_mod
from integrations.flower.strategy import InstrumentedGrid, InstrumentedStrategy, ServerInstrument

__all__ = ["InstrumentedGrid", "InstrumentedStrategy", "ServerInstrument", "flsim_client_mod"]
