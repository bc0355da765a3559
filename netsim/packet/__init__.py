"""A packet-level peer of the fluid engine: tbf links with drop-tail queues, Linux-like TCP, and the
replay of a collective as split-TCP runs it (:func:`replay`); :func:`~netsim.packet.engine.simulate_packets`
replays a path policy's routing (``netsim simulate --engine packet``); ``tools/packet_vs_measured.py``
compares it with ``netsim measure`` rows."""

from netsim.packet.replay import PacketParams, PacketResult, replay

__all__ = ["PacketParams", "PacketResult", "replay"]
