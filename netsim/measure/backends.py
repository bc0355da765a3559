"""The communication backends ``netsim measure`` times, behind one small per-rank interface.

Each backend allocates nccl-tests-shaped buffers for a size (:meth:`Backend.buffers`), runs one
collective on them (:meth:`Backend.run`, returning once it is complete on this rank) and synchronises
ranks (:meth:`Backend.barrier`). Backends import their library lazily: torch for gloo/nccl, mpi4py for mpi.
"""

from __future__ import annotations

import datetime
import enum
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from netsim.measure.errors import MeasureError


class BackendName(str, enum.Enum):
    """Backends ``netsim measure`` knows."""

    mpi = "mpi"
    gloo = "gloo"
    nccl = "nccl"
    split_tcp = "split-tcp"


class CollectiveName(str, enum.Enum):
    """Collectives ``netsim measure`` times (nccl-tests' names)."""

    allreduce = "allreduce"
    allgather = "allgather"
    reducescatter = "reducescatter"
    alltoall = "alltoall"


DTYPE = np.float32


def element_count(collective: CollectiveName, size_bytes: int, world: int) -> tuple[int, int]:
    """(input elements, output elements) per rank for nccl-tests' ``size`` (the larger per-rank buffer)."""
    total = size_bytes // np.dtype(DTYPE).itemsize
    if collective is CollectiveName.allreduce:
        return total, total
    if collective is CollectiveName.allgather:
        return total // world, (total // world) * world
    if collective is CollectiveName.reducescatter:
        return (total // world) * world, total // world
    return (total // world) * world, (total // world) * world


def effective_size(collective: CollectiveName, size_bytes: int, world: int) -> int:
    """``size_bytes`` rounded down as nccl-tests does, so that every rank's block has whole elements."""
    inp, out = element_count(collective, size_bytes, world)
    return max(inp, out) * np.dtype(DTYPE).itemsize


class Backend(Protocol):
    """One rank's handle on a communication library."""

    rank: int
    world: int

    def buffers(self, collective: CollectiveName, size_bytes: int) -> tuple[Any, Any]:
        """Input and output buffers for ``size_bytes`` (nccl-tests' size)."""

    def run(self, collective: CollectiveName, inp: Any, out: Any) -> None:
        """Run one collective; returns once it has completed on this rank."""

    def barrier(self) -> None:
        """Wait until every rank has reached this point."""

    def close(self) -> None:
        """Release the backend's connections."""


@dataclass
class SplitTcpBackend:
    """The split-TCP transport (:mod:`netsim.transport`)."""

    rank: int
    world: int
    transport: Any
    _token: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.uint8))

    def buffers(self, collective: CollectiveName, size_bytes: int) -> tuple[Any, Any]:
        n_in, n_out = element_count(collective, size_bytes, self.world)
        return np.ones(n_in, dtype=DTYPE), np.empty(n_out, dtype=DTYPE)

    def run(self, collective: CollectiveName, inp: Any, out: Any) -> None:
        from netsim.transport import collectives

        if collective is CollectiveName.allreduce:
            collectives.allreduce(self.transport, inp)
        elif collective is CollectiveName.allgather:
            collectives.allgather(self.transport, inp, out)
        elif collective is CollectiveName.reducescatter:
            collectives.reducescatter(self.transport, inp, out)
        else:
            collectives.alltoall(self.transport, inp, out)

    def barrier(self) -> None:
        from netsim.transport import collectives

        collectives.allgather(self.transport, self._token, np.empty(self.world, dtype=np.uint8))

    def close(self) -> None:
        self.transport.close()


@dataclass
class TorchBackend:
    """``torch.distributed`` with gloo (CPU tensors) or nccl (one GPU per rank)."""

    rank: int
    world: int
    device: str
    dist: Any
    torch: Any

    @classmethod
    def start(
        cls, library: str, rank: int, world: int, master: tuple[str, int], timeout: float
    ) -> TorchBackend:
        import torch
        import torch.distributed as dist

        device = "cpu"
        if library == "nccl":
            if not torch.cuda.is_available():
                raise MeasureError(
                    "the nccl backend needs CUDA GPUs; torch.cuda.is_available() is False here"
                )
            gpu = rank % torch.cuda.device_count()
            torch.cuda.set_device(gpu)
            device = f"cuda:{gpu}"
        dist.init_process_group(
            library,
            init_method=f"tcp://{master[0]}:{master[1]}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
        return cls(rank, world, device, dist, torch)

    def buffers(self, collective: CollectiveName, size_bytes: int) -> tuple[Any, Any]:
        n_in, n_out = element_count(collective, size_bytes, self.world)
        return (
            self.torch.ones(n_in, dtype=self.torch.float32, device=self.device),
            self.torch.empty(n_out, dtype=self.torch.float32, device=self.device),
        )

    def run(self, collective: CollectiveName, inp: Any, out: Any) -> None:
        d = self.dist
        if collective is CollectiveName.allreduce:
            d.all_reduce(inp)
        elif collective is CollectiveName.allgather:
            d.all_gather_into_tensor(out, inp)
        elif collective is CollectiveName.reducescatter:
            d.reduce_scatter_tensor(out, inp)
        else:
            d.all_to_all_single(out, inp)
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def barrier(self) -> None:
        if self.device != "cpu":
            self.dist.barrier(device_ids=[self.torch.cuda.current_device()])
            self.torch.cuda.synchronize()
        else:
            self.dist.barrier()

    def close(self) -> None:
        self.dist.destroy_process_group()


@dataclass
class MpiBackend:
    """MPI through mpi4py (``mpiexec`` starts the ranks)."""

    rank: int
    world: int
    comm: Any

    @classmethod
    def start(cls) -> MpiBackend:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise MeasureError(f"the mpi backend needs mpi4py (pip install mpi4py mpich): {exc}") from None
        comm = MPI.COMM_WORLD
        return cls(comm.Get_rank(), comm.Get_size(), comm)

    def buffers(self, collective: CollectiveName, size_bytes: int) -> tuple[Any, Any]:
        n_in, n_out = element_count(collective, size_bytes, self.world)
        return np.ones(n_in, dtype=DTYPE), np.empty(n_out, dtype=DTYPE)

    def run(self, collective: CollectiveName, inp: Any, out: Any) -> None:
        from mpi4py import MPI

        if collective is CollectiveName.allreduce:
            self.comm.Allreduce(MPI.IN_PLACE, inp)
        elif collective is CollectiveName.allgather:
            self.comm.Allgather(inp, out)
        elif collective is CollectiveName.reducescatter:
            self.comm.Reduce_scatter_block(inp, out)
        else:
            self.comm.Alltoall(inp, out)

    def barrier(self) -> None:
        self.comm.Barrier()

    def close(self) -> None:
        """Nothing to release (mpi4py finalises at exit)."""


def gloo_env(interface: str) -> None:
    """Point gloo at ``interface`` (lo on loopback, eth0 in a fabric host namespace)."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
