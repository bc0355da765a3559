"""Real-link emulation shared by flsim (per-client access links) and netsim's emulated fabric.

* :mod:`netsim.fabric.namespaces` - network namespaces, veth pairs, addresses, routes, cleanup;
* :mod:`netsim.fabric.shaping` - token-bucket rate limits (``tc tbf``) and their rate convention;
* :mod:`netsim.fabric.delayline` - a user-space TUN delay line for delay, jitter and loss on kernels
  without ``netem`` (this project's machines);
* :mod:`netsim.fabric.access` - one shaped access link: host <-> [router] <-> leaf namespace;
* :mod:`netsim.fabric.leafspine` - an emulated leaf-spine (ECMP, per-spine path pinning by source port),
  ``netsim fabric up|down|status`` (:mod:`netsim.fabric.cli`).

Everything here needs root and ``iproute2``; :func:`netsim.fabric.namespaces.missing_capabilities` says
what is missing instead of failing half-way.
"""

from netsim.fabric.access import AccessLink, LinkSpec
from netsim.fabric.errors import FabricError
from netsim.fabric.namespaces import missing_capabilities

__all__ = ["AccessLink", "FabricError", "LinkSpec", "missing_capabilities"]
