"""``netsim measure``: collective completion times over real links (loopback or the emulated fabric).

* :mod:`netsim.measure.backends` - mpi (mpi4py), gloo and nccl (torch.distributed), split-tcp;
* :mod:`netsim.measure.worker` - one rank: warm-up, timed iterations per size, a JSON file of times;
* :mod:`netsim.measure.launch` - starts the ranks (processes, fabric namespaces, or ``mpiexec``);
* :mod:`netsim.measure.report` - nccl-tests' columns and quantiles across iterations and ranks.
"""

from netsim.measure.backends import BackendName, CollectiveName
from netsim.measure.errors import MeasureError
from netsim.measure.launch import MeasureConfig
from netsim.measure.report import run_measurement

__all__ = ["BackendName", "CollectiveName", "MeasureConfig", "MeasureError", "run_measurement"]
