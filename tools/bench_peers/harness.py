"""The multi-rank checkpoint benchmark harness shared by tools/bench_checkpoint.py and the peer
runners under tools/bench_peers/ (which run in virtual environments of their own).

It imports only torch and the standard library (never ``bytecheckpoint``: that name is ours in this
repo and ByteDance's in the peer venv). What it does on each rank:

- builds the state: ``plain`` (float32 tensors in a dict) or ``fsdp2`` (a stack of Linear layers,
  ``fully_shard``-ed, AdamW after one step so its moments exist), every value a deterministic
  function of (tensor id, global element index), so any layout can be checked without the saver;
- runs the systems interleaved per round, the order rotating (A B C, B C A, ...): before each save
  the previous checkpoint is deleted and the disk synced (not charged to the save); each save's
  stall (the call) and end to end (until ``wait()`` / ``result()``) are timed on every rank, with
  the peak host memory (RSS) above the start of the operation; before each load the page cache of
  the files is dropped; every load is checked tensor by tensor against the expected values;
- in a second launch with fewer ranks, loads the last checkpoint of each system resharded.

Rank 0 writes every record (one per operation and rank) as JSON; the caller aggregates.
"""

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

MiB = 1 << 20


class Unsupported(Exception):
    """The system cannot run in this build or on this machine; the row is reported n/a."""


# ---------------------------------------------------------------------------------------------
# values: a deterministic function of (tensor id, global flat index), exact on any device


def pattern_(out: torch.Tensor, tid: int, start: int) -> torch.Tensor:
    """Fill the contiguous float tensor ``out`` with the values of tensor ``tid`` at global flat
    indices ``start .. start + out.numel()``: 24-bit hashes scaled to [-0.5, 0.5), so equal bitwise
    on CPU and GPU whatever the layout."""
    flat = out.view(-1)
    chunk = 1 << 23
    for s in range(0, flat.numel(), chunk):
        n = min(chunk, flat.numel() - s)
        h = torch.arange(start + s, start + s + n, dtype=torch.int64, device=out.device)
        h = (h * 2654435761 + (tid + 1) * 97531) & 0xFFFFFFFF
        h = h ^ (h >> 15)
        h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
        h = h ^ (h >> 12)
        flat[s:s + n] = (h & 0xFFFFFF).to(torch.float32) * (1.0 / (1 << 24)) - 0.5
    return out


@dataclass
class Item:
    """One local tensor of the state: what the benchmark fills, zeroes, checks and writes raw."""

    key: str
    local: torch.Tensor  # the live storage (a DTensor's local shard, or a plain tensor)
    ref: torch.Tensor  # the expected values, same device and shape


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (else the tensor), detached: same storage, no autograd view."""
    with torch.no_grad():
        return (t.to_local() if hasattr(t, "to_local") else t).detach()


def quiet_dcp_daemon_logs() -> None:
    """DCP's process-mode daemon adds an INFO stream handler to the root logger (several lines per
    save on every rank). Call at the top of a spawned main module: the daemon imports that module
    before DCP's executor, which then picks up this version (WARNING and up; nothing else changes)."""
    import logging

    try:
        import torch.distributed.checkpoint._async_process_executor as executor
        import torch.distributed.checkpoint.logger as dcp_logger
    except ImportError:
        return
    original = dcp_logger._init_logger

    def init_logger(rank: int) -> None:
        original(rank)
        dcp_logger.logger.setLevel(logging.WARNING)

    dcp_logger._init_logger = executor._init_logger = init_logger


def _row_start(global_rows: int, local_rows: int, rank: int, world: int) -> int:
    """First global row of this rank's Shard(0) chunk (torch.chunk semantics, as FSDP2 cuts)."""
    chunk = math.ceil(global_rows / world) if global_rows else 0
    start = min(rank * chunk, global_rows)
    expect = max(0, min(chunk, global_rows - start))
    if expect != local_rows:
        raise RuntimeError(f"unexpected Shard(0) cut: {local_rows} rows on rank {rank}, expected {expect}")
    return start


# ---------------------------------------------------------------------------------------------
# the states


@dataclass
class Ctx:
    """Everything a system's save and load need on one rank."""

    rank: int
    world: int
    device: str
    mode: str  # plain | fsdp2
    ctl: Any  # gloo group: barriers and result gathering
    bg: Any  # gloo group for background (async) checkpoint collectives
    items: list[Item] = field(default_factory=list)
    state: dict | None = None  # plain mode: the tensors by name
    model: Any = None
    optim: Any = None
    host: torch.Tensor | None = None  # GPU: a pinned host buffer of this rank's bytes (floors)
    config: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(i.local.numel() * i.local.element_size() for i in self.items)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def fsdp2_width(mib_per_rank: float, world: int, layers: int) -> int:
    """Hidden size of ``layers`` square Linear layers whose parameters plus AdamW's two moments take
    about ``mib_per_rank`` MiB per rank when sharded over ``world`` ranks (a multiple of 64)."""
    params = mib_per_rank * MiB * world / 12  # 4 bytes x (param, exp_avg, exp_avg_sq)
    return max(64, int(math.sqrt(params / layers)) // 64 * 64)


def build_fsdp2(ctx: Ctx, width: int, layers: int) -> None:
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device, (ctx.world,))
    with torch.device("meta"):
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=ctx.device)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())

    def fill(t: torch.Tensor, tid: int) -> None:
        local = _local(t)
        row0 = _row_start(t.shape[0], local.shape[0], ctx.rank, ctx.world)
        per_row = math.prod(t.shape[1:])
        with torch.no_grad():
            pattern_(local, tid, row0 * per_row)

    for k, name in enumerate(names):
        fill(params[name], 3 * k)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    g = torch.Generator(device=ctx.device).manual_seed(1)
    x = torch.randn(2, width, generator=g, device=ctx.device)
    model(x).pow(2).mean().backward()  # every rank runs the forward (FSDP2 needs it)
    optim.step()
    optim.zero_grad(set_to_none=True)
    ctx.sync()
    for k, name in enumerate(names):  # known values everywhere: params and both moments
        p = params[name]
        fill(p, 3 * k)
        st = optim.state[p]
        fill(st["exp_avg"], 3 * k + 1)
        fill(st["exp_avg_sq"], 3 * k + 2)
        with torch.no_grad():
            _local(st["exp_avg_sq"]).abs_()
        ctx.items += [Item(f"model.{name}", _local(p), None), Item(f"optim.{name}.exp_avg", _local(st["exp_avg"]), None),
                      Item(f"optim.{name}.exp_avg_sq", _local(st["exp_avg_sq"]), None),
                      Item(f"optim.{name}.step", st["step"], None)]
    for it in ctx.items:
        it.ref = it.local.detach().clone()
    ctx.model, ctx.optim = model, optim
    ctx.sync()


def build_plain(ctx: Ctx, mib: float, tensors: int) -> None:
    numel = int(mib * MiB) // 4 // tensors
    ctx.state = {}
    for i in range(tensors):
        t = pattern_(torch.empty(numel, dtype=torch.float32, device=ctx.device), i, 0)
        ctx.state[f"layer{i}.weight"] = t
        ctx.items.append(Item(f"layer{i}.weight", t, t.clone()))
    ctx.sync()


def zero_state(ctx: Ctx) -> None:
    with torch.no_grad():
        for it in ctx.items:
            it.local.zero_()
    ctx.sync()


def restore_state(ctx: Ctx) -> None:
    with torch.no_grad():
        for it in ctx.items:
            it.local.copy_(it.ref)
    ctx.sync()


def check_state(ctx: Ctx) -> list[str]:
    """Keys whose loaded values differ from the expected ones (empty: all equal)."""
    ctx.sync()
    return [it.key for it in ctx.items if not torch.equal(it.local, it.ref)]


# ---------------------------------------------------------------------------------------------
# floors: the same bytes written to one file per rank (fsync'd) and read back; device copies


def raw_file(root: Path, rank: int) -> Path:
    return root / f"rank{rank}.bin"


def _host_views(ctx: Ctx) -> list[torch.Tensor]:
    """The bytes of each item as a uint8 host tensor: the items themselves on CPU, slices of the
    pinned host buffer on GPU."""
    if ctx.device == "cpu":
        return [it.local.contiguous().view(-1).view(torch.uint8) for it in ctx.items]
    sizes = [it.local.numel() * it.local.element_size() for it in ctx.items]
    offsets = [0]
    for n in sizes:
        offsets.append((offsets[-1] + n + 63) // 64 * 64)  # aligned for any dtype's view
    if ctx.host is None:
        ctx.host = torch.empty(offsets[-1], dtype=torch.uint8, pin_memory=True)
    return [ctx.host[off:off + n] for off, n in zip(offsets, sizes)]


def d2h(ctx: Ctx) -> float:
    """Pinned device-to-host copy of this rank's bytes (GPU only): the floor of a snapshot stall."""
    views = _host_views(ctx)
    ctx.sync()
    t0 = time.perf_counter()
    for it, v in zip(ctx.items, views):
        v.view(it.local.dtype).view(it.local.shape).copy_(it.local, non_blocking=True)
    ctx.sync()
    return time.perf_counter() - t0


def h2d(ctx: Ctx) -> float:
    views = _host_views(ctx)
    ctx.sync()
    t0 = time.perf_counter()
    for it, v in zip(ctx.items, views):
        it.local.copy_(v.view(it.local.dtype).view(it.local.shape), non_blocking=True)
    ctx.sync()
    return time.perf_counter() - t0


def raw_write(ctx: Ctx, path: Path) -> dict:
    """fsync'd write of this rank's bytes from host memory (GPU: the pinned copy made first)."""
    extra = {"d2h": d2h(ctx)} if ctx.device == "cuda" else {}
    views = _host_views(ctx)
    path.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(raw_file(path, ctx.rank), "wb", buffering=0) as f:
        f.writelines(memoryview(v.numpy()) for v in views)
        os.fsync(f.fileno())
    return {"write": time.perf_counter() - t0, **extra}


def raw_read(ctx: Ctx, path: Path) -> dict:
    views = _host_views(ctx)
    t0 = time.perf_counter()
    with open(raw_file(path, ctx.rank), "rb", buffering=0) as f:
        for v in views:
            mv = memoryview(v.numpy())
            got = 0
            while got < len(mv):
                n = f.readinto(mv[got:])
                if not n:
                    raise EOFError(f"{f.name} is short")
                got += n
    out = {"read": time.perf_counter() - t0}
    if ctx.device == "cuda":
        out["h2d"] = h2d(ctx)
    return out


def raw_read_files(paths: list[Path]) -> dict:
    """Resharded floor: read the given files (whole) into one reused host buffer."""
    size = max(p.stat().st_size for p in paths)
    buf = bytearray(min(size, 64 * MiB))
    mv = memoryview(buf)
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(mv):
                pass
    return {"read": time.perf_counter() - t0}


def drop_cache(root: Path) -> None:
    """Flush and drop the page cache of every file under ``root`` (cold reads after)."""
    if not root.exists():
        return
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------------------------------------
# host memory: peak RSS of the rank (exact, VmHWM after a reset) and of its child processes
# (sampled: DCP's process mode saves in a child of the rank)

_PAGE = os.sysconf("SC_PAGE_SIZE")
try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _libc = None


def _rss(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _descendants() -> list[int]:
    todo, seen = _children(os.getpid()), []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += _children(pid)
    return seen


def _hwm() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemPeak:
    """Peak RSS increase over the start of an operation: the rank's own (VmHWM reset through
    /proc/self/clear_refs when allowed, else sampled) plus its child processes' (sampled)."""

    def __init__(self, interval: float = 0.004) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemPeak:  # noqa: PYI034 - final in practice
        if _libc is not None:
            _libc.malloc_trim(0)  # freed heap goes back, so reuse of old pages is not hidden
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.base_self = _rss()
        self.kids = _descendants()
        self.base_kids = sum(_rss(p) for p in self.kids)
        self.peak_self, self.peak_kids = self.base_self, self.base_kids
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            self.peak_self = max(self.peak_self, _rss())
            if n % 16 == 0:
                self.kids = _descendants()
            if self.kids:
                self.peak_kids = max(self.peak_kids, sum(_rss(p) for p in self.kids))
            n += 1
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm_reset and (h := _hwm()) is not None:
            self.peak_self = max(self.peak_self, h)
        self.self_mib = (self.peak_self - self.base_self) / MiB
        self.kids_mib = (self.peak_kids - self.base_kids) / MiB
        self.base_mib = self.base_self / MiB


# ---------------------------------------------------------------------------------------------
# systems


class Pending:
    """What a save call returns: ``wait()`` blocks until the checkpoint is committed."""

    def __init__(self, wait: Callable[[], object] | None = None, extra: dict | None = None) -> None:
        self._wait = wait
        self.extra = extra or {}

    def wait(self) -> None:
        if self._wait is not None:
            self._wait()


@dataclass
class System:
    name: str  # the row key in the JSON
    label: str  # the row in the table
    save: Callable[[Path], Pending | dict | None] | None
    load: Callable[[Path], dict | None] | None
    fmt: str  # checkpoint format: rows of one format load with the same code
    is_async: bool = False
    reshard: bool = False  # keep the last checkpoint and load it at the reduced world size
    load_every_round: bool = True  # else its checkpoint is loaded (and checked) in the last round only
    ckpt: str = ""  # load another row's checkpoint (a load-only row, ``save`` None): reshard phase only
    warmup: Callable[[Path], object] | None = None  # one-time start-up, run untimed before the rounds

    def path(self, root: Path) -> Path:
        return root / (self.ckpt or self.name)


def raw_system(ctx: Ctx) -> System:
    return System("raw", "disk floor (raw fsync'd write / cold read)", lambda p: raw_write(ctx, p),
                  lambda p: raw_read(ctx, p), "raw", reshard=True)


def dcp_systems(ctx: Ctx, *, asyncs: bool = True, prefix: str = "dcp", label: str = "DCP") -> list[System]:
    """PyTorch DCP: ``save`` / ``load`` (FSDP2 states through get_state_dict / set_state_dict, as
    its recipe has it), and ``async_save`` in thread and process mode on a gloo group of its own."""
    import torch.distributed.checkpoint as dcp

    def state() -> dict:
        if ctx.mode == "plain":
            return ctx.state
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(ctx.model, ctx.optim)
        return {"model": msd, "optim": osd}

    def save(path: Path) -> None:
        dcp.save(state(), checkpoint_id=str(path))

    def load(path: Path) -> None:
        sd = state()
        dcp.load(sd, checkpoint_id=str(path))
        if ctx.mode == "fsdp2":
            from torch.distributed.checkpoint.state_dict import set_state_dict

            set_state_dict(ctx.model, ctx.optim, model_state_dict=sd["model"], optim_state_dict=sd["optim"])

    def async_save(kind: str) -> Callable[[Path], Pending]:
        def run(path: Path, tiny: bool = False) -> Pending:
            kwargs: dict[str, Any] = {}
            try:
                from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
            except ImportError:
                AsyncCheckpointerType = None
            if kind == "process":
                if AsyncCheckpointerType is None or not hasattr(AsyncCheckpointerType, "PROCESS"):
                    raise Unsupported(f"n/a (torch {torch.__version__} has no process mode)")
                kwargs["async_checkpointer_type"] = AsyncCheckpointerType.PROCESS
            elif AsyncCheckpointerType is not None:
                kwargs["async_checkpointer_type"] = AsyncCheckpointerType.THREAD
            sd = {"warmup": torch.zeros(1)} if tiny else state()
            fut = dcp.async_save(sd, checkpoint_id=str(path), process_group=ctx.bg, **kwargs)
            done = getattr(fut, "upload_completion", fut)  # AsyncSaveResponse with async stagers
            return Pending(done.result)
        return run

    out = [System(prefix, f"{label} save", save, load, prefix, reshard=True)]
    if asyncs:
        out += [System(f"{prefix}_async_thread", f"{label} async_save (thread)", async_save("thread"), load, prefix,
                       is_async=True, load_every_round=False),
                System(f"{prefix}_async_process", f"{label} async_save (process)", async_save("process"), load, prefix,
                       is_async=True, load_every_round=False,
                       # its daemon process starts on the first call and serves every later one
                       warmup=lambda p: async_save("process")(p, tiny=True).wait())]
    return out


# ---------------------------------------------------------------------------------------------
# the per-rank loop


def _gather(ctx: Ctx, obj: Any) -> list[Any]:
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj, group=ctx.ctl)
    return out


def _barrier(ctx: Ctx) -> None:
    dist.barrier(group=ctx.ctl)


def _run_op(ctx: Ctx, fn: Callable[[], Any], *, timed_wait: bool) -> tuple[bool, dict]:
    """Run one save (``timed_wait``: stall = the call, e2e = until wait() returns) or load."""
    ctx.sync()
    try:
        with MemPeak() as mem:
            t0 = time.perf_counter()
            pending = fn()
            t1 = time.perf_counter()
            ctx.sync()
            t1s = time.perf_counter()
            extra: dict = {}
            if isinstance(pending, Pending):
                pending.wait()
                extra = pending.extra
            elif isinstance(pending, dict):
                extra = pending
            ctx.sync()
            t2 = time.perf_counter()
    except Unsupported as exc:
        return False, {"unsupported": str(exc)}
    except Exception as exc:  # noqa: BLE001 - reported in the table, the other systems go on
        return False, {"error": f"{type(exc).__name__}: {exc}"[:600], "trace": traceback.format_exc()[-3000:]}
    rec = {"seconds": t2 - t0, "peak_rss_mib": mem.self_mib + mem.kids_mib, "peak_rss_self_mib": mem.self_mib,
           "peak_rss_children_mib": mem.kids_mib, "rss_at_start_mib": mem.base_mib, **extra}
    if timed_wait:
        rec.update(stall=t1 - t0, stall_synced=t1s - t0, e2e=t2 - t0)
    return True, rec


class Recorder:
    def __init__(self, ctx: Ctx, phase: str) -> None:
        self.ctx, self.phase = ctx, phase
        self.records: list[dict] = []
        self.status: dict[str, str] = {}  # system -> why it is not run any more

    def op(self, system: System, op: str, rnd: int, fn: Callable[[], Any], *, timed_wait: bool = False,
           check: bool = False) -> bool:
        _barrier(self.ctx)
        ok, rec = _run_op(self.ctx, fn, timed_wait=timed_wait)
        if ok and check:
            bad = check_state(self.ctx)
            rec["verified"] = not bad
            if bad:
                rec["mismatched"] = bad[:8]
                restore_state(self.ctx)
        elif not ok and op.startswith("load"):
            restore_state(self.ctx)
        ranks = _gather(self.ctx, (ok, rec))
        for r, (rok, rrec) in enumerate(ranks):
            self.records.append({"phase": self.phase, "system": system.name, "op": op, "round": rnd, "rank": r,
                                 "ok": rok, **{k: v for k, v in rrec.items() if k != "trace"}})
        if not all(rok for rok, _ in ranks):
            why = next((rrec.get("unsupported") for _, rrec in ranks if rrec.get("unsupported")), None)
            err = next(((r, rrec) for r, (_, rrec) in enumerate(ranks) if rrec.get("error")), None)
            self.status[system.name] = why or f"failed on rank {err[0]} ({op}): {err[1]['error']}"
            if err and self.ctx.rank == 0:
                print(f"[{self.phase}] {system.name} {op} failed:\n{err[1].get('trace', '')}", flush=True)
            return False
        if check and not all(rrec.get("verified") for _, rrec in ranks):
            self.status.setdefault(system.name + ":" + op, "loaded tensors differ from the saved ones")
        return True


def _rotate(items: list, r: int) -> list:
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def run_main(ctx: Ctx, systems: list[System], root: Path, rounds: int, budget_s: float | None) -> dict:
    """Save and load every system, interleaved, ``rounds`` times; with ``budget_s``, a round that
    would leave no time for another becomes the last (at least one round runs)."""
    rec = Recorder(ctx, "main")
    for s in systems:
        if s.warmup is not None:
            path = root / f"warmup-{s.name}"
            rec.op(s, "warmup", -1, lambda s=s, path=path: s.warmup(path))
            _barrier(ctx)
            if ctx.rank == 0:
                remove(path)
    started = time.perf_counter()
    done = 0
    for r in range(rounds):
        elapsed = time.perf_counter() - started
        last = r == rounds - 1 or (budget_s is not None and r > 0 and elapsed + 2 * elapsed / r > budget_s)
        last = _gather(ctx, last)[0]  # rank 0 decides for all
        if ctx.device == "cuda":
            rec.op(System("d2h", "", None, None, "raw"), "d2h", r, lambda: {"d2h": d2h(ctx)})
        for s in _rotate(systems, r):
            if s.name in rec.status or s.save is None:
                continue
            path = s.path(root)
            if ctx.rank == 0:
                remove(path)
            os.sync()  # the deletion (and anything before) is not charged to the save
            if not rec.op(s, "save", r, lambda s=s, path=path: s.save(path), timed_wait=True):
                continue
            if ctx.rank == 0:
                drop_cache(path)
            if s.load is not None and (s.load_every_round or last):
                zero_state(ctx)
                if ctx.rank == 0:
                    drop_cache(path)
                rec.op(s, "load", r, lambda s=s, path=path: s.load(path), check=True)
            if not (s.reshard and last and ctx.config.get("reshard")):
                _barrier(ctx)
                if ctx.rank == 0:
                    remove(path)
        done = r + 1
        if ctx.rank == 0:
            print(f"round {done}/{rounds} ({time.perf_counter() - started:.0f}s so far): {_round_line(rec.records, r)}",
                  flush=True)
        if last:
            break
    if done < rounds and ctx.rank == 0:
        print(f"time budget {budget_s:.0f}s: stopped after {done} of {rounds} rounds", flush=True)
    return {"records": rec.records, "status": rec.status, "rounds_done": done}


def _round_line(records: list[dict], rnd: int) -> str:
    """'name save/load' seconds of one round (slowest rank), for progress output."""
    worst: dict[tuple[str, str], float] = {}
    for x in records:
        if x["round"] == rnd and x["ok"] and x["op"] in ("save", "load", "d2h"):
            key = (x["system"], x["op"])
            worst[key] = max(worst.get(key, 0.0), x.get("e2e", x.get("d2h", x.get("seconds", 0.0))))
    names = list(dict.fromkeys(k[0] for k in worst))
    return ", ".join(f"{n} " + "/".join(f"{worst[(n, op)]:.2f}" for op in ("d2h", "save", "load") if (n, op) in worst)
                     for n in names)


def run_reshard(ctx: Ctx, systems: list[System], root: Path, saved_world: int, rounds: int) -> dict:
    """Load each system's last checkpoint (saved at ``saved_world`` ranks) at this world size."""
    rec = Recorder(ctx, "reshard")
    for r in range(rounds):
        for s in _rotate(systems, r):
            if s.name in rec.status:
                continue
            path = s.path(root)
            if not path.exists():
                rec.status[s.name] = "no checkpoint left by the save phase"
                continue
            zero_state(ctx)
            if ctx.rank == 0:
                drop_cache(path)
            if s.fmt == "raw":
                per = saved_world // ctx.world
                files = [raw_file(path, q) for q in range(ctx.rank * per, (ctx.rank + 1) * per)]
                rec.op(s, "load", r, lambda files=files: raw_read_files(files))
                restore_state(ctx)
            else:
                rec.op(s, "load", r, lambda s=s, path=path: s.load(path), check=True)
        if ctx.rank == 0:
            print(f"resharded round {r + 1}/{rounds}: {_round_line(rec.records, r)}", flush=True)
    return {"records": rec.records, "status": rec.status}


# ---------------------------------------------------------------------------------------------
# launching ranks


def _init(rank: int, cfg: dict) -> Ctx:
    world, device = cfg["world"], cfg["device"]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # DCP's process mode rendezvous on loopback
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    backend = "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
        if cfg["mode"] == "fsdp2":
            backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, init_method=f"file://{cfg['store']}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=cfg.get("pg_timeout", 900)))
    ctl = dist.new_group(backend="gloo")
    bg = dist.new_group(backend="gloo")
    ctx = Ctx(rank, world, device, cfg["mode"], ctl, bg, config=cfg)
    if cfg["mode"] == "fsdp2":
        build_fsdp2(ctx, cfg["width"], cfg["layers"])
    else:
        build_plain(ctx, cfg["mib"], cfg["tensors"])
    return ctx


def rank_entry(rank: int, cfg: dict, make_systems: Callable[[Ctx], list[System]]) -> None:
    """The body of every rank: build, run the phase, rank 0 writes the records to cfg['out']."""
    ctx = _init(rank, cfg)
    try:
        systems = make_systems(ctx)
        if ctx.device == "cuda":
            _host_views(ctx)  # allocate the pinned buffer before any timing
        root = Path(cfg["root"])
        if cfg["phase"] == "main":
            result = run_main(ctx, systems, root, cfg["rounds"], cfg.get("budget_s"))
        else:
            result = run_reshard(ctx, [s for s in systems if s.reshard], root, cfg["saved_world"], cfg["rounds"])
        result["bytes_per_rank"] = _gather(ctx, ctx.nbytes)
        result["tensors_per_rank"] = len(ctx.items)
        result["systems"] = [{"name": s.name, "label": s.label, "async": s.is_async} for s in systems]
        result["device_info"] = {"torch": torch.__version__}
        if ctx.device == "cuda":
            result["device_info"].update(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count())
        if rank == 0:
            Path(cfg["out"]).write_text(json.dumps(result))
        _barrier(ctx)
    finally:
        dist.destroy_process_group()


def launch(nprocs: int, cfg: dict, make_systems: Callable[[Ctx], list[System]], scratch: Path) -> dict:
    """Spawn ``nprocs`` ranks (file store in ``scratch``) running ``rank_entry``; the rank-0 result."""
    import torch.multiprocessing as mp

    scratch.mkdir(parents=True, exist_ok=True)
    fd, store = tempfile.mkstemp(prefix="store-", dir=scratch)
    os.close(fd)
    os.unlink(store)
    out = scratch / f"result-{cfg['phase']}-{nprocs}-{os.getpid()}-{time.time_ns()}.json"
    cfg = {**cfg, "world": nprocs, "store": store, "out": str(out)}
    mp.spawn(rank_entry, args=(cfg, make_systems), nprocs=nprocs, join=True)
    result = json.loads(out.read_text())
    out.unlink()
    return result
