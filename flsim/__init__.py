"""flsim: federated-learning round instrumentation over real and emulated links.

Framework-agnostic core (no Flower import): :class:`RoundRecorder` events -> :func:`assemble` phases ->
CSV/JSON results and PNG reports; link profiles shaped through :mod:`netsim.fabric`. Flower glue lives in
``integrations.flower``.
"""

from flsim.clock import OffsetEstimate, estimate_offset
from flsim.errors import FlsimError, ProfileError, RecordError, RunError
from flsim.links import BUILTIN, LinkProfile, load_profile
from flsim.phases import PHASES, PhaseRecord, RoundTimeline, assemble, check_sums
from flsim.recorder import RoundRecorder, mark_client, read_events

__all__ = [
    "BUILTIN",
    "PHASES",
    "FlsimError",
    "LinkProfile",
    "OffsetEstimate",
    "PhaseRecord",
    "ProfileError",
    "RecordError",
    "RoundRecorder",
    "RoundTimeline",
    "RunError",
    "assemble",
    "check_sums",
    "estimate_offset",
    "load_profile",
    "mark_client",
    "read_events",
]
