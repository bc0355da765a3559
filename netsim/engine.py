"""Event-driven max-min fair fluid engine.

Every active subflow gets its weighted max-min fair rate (progressive filling). Time advances from event
to event: the next subflow completion (rates are constant in between) or the next step start from a
SimPy-style heap ``(time, priority, seq, ...)``; at equal times a running job's next step precedes a
job's first step, then insertion order decides. Subflows finishing within a relative 1e-9 of each other
complete in one event batch; rates are recomputed only after the set of active subflows changes.

Steps of a job are barriers: step k+1 starts when every flow of step k has finished. A step that repeats
the same FlowSet object as an earlier step of the run, and has the fabric to itself for as long as that
earlier step took, is *replayed*: the fluid model is deterministic, so its durations and FCTs are copied
instead of simulated (``replay=False`` turns this off; tests check both agree).
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass

import numpy as np

from netsim.errors import TrafficError
from netsim.metrics import ideal_step_seconds, link_congestion
from netsim.policies import PathPolicy, Routing
from netsim.results import SimulationResult, StepRecord
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet, Job

log = logging.getLogger(__name__)

_REL_TOL = 1e-9
_CONTINUATION, _ARRIVAL = 0, 1  # heap priority at equal times: running jobs' next steps before new jobs


def max_min_rates(n_sub: int, entry_sub: np.ndarray, entry_link: np.ndarray, entry_weight: np.ndarray,
                  capacity: np.ndarray, previous: np.ndarray | None = None, floor: float = 0.0,
                  ) -> np.ndarray:
    """Weighted max-min fair rates (bytes/s) of ``n_sub`` subflows by progressive filling.

    Subflow ``s`` at rate ``r`` loads link ``l`` with ``w * r`` for each entry ``(s, l, w)``. All unfrozen
    subflows rise together; when a link saturates, the subflows crossing it freeze at the current level.

    Incremental update: if only subflows whose previous rate was at least ``floor`` left the system, the
    filling below ``floor`` replays unchanged, so subflows with ``previous < floor`` keep their rates and
    only the rest are refilled, starting at level ``floor``.
    """
    rate = np.zeros(n_sub)
    if n_sub == 0:
        return rate
    level = 0.0
    cap_left = np.asarray(capacity, dtype=np.float64)
    sub, link, w = entry_sub, entry_link, entry_weight
    if previous is not None and floor > 0:
        fixed = previous < floor * (1 - _REL_TOL)
        rate[fixed] = previous[fixed]
        fixed_entry = fixed[sub]
        cap_left = cap_left - np.bincount(link[fixed_entry], weights=w[fixed_entry] * previous[sub[fixed_entry]],
                                          minlength=cap_left.size)
        keep = ~fixed_entry
        sub, link, w = sub[keep], link[keep], w[keep]
        level = floor
    links, link_idx = np.unique(link, return_inverse=True)
    cap_tol = np.asarray(capacity, dtype=np.float64)[links] * _REL_TOL
    cap_left = cap_left[links] - level * np.bincount(link_idx, weights=w, minlength=links.size)
    unfrozen = np.ones(n_sub, dtype=bool)
    while sub.size:
        demand = np.bincount(link_idx, weights=w, minlength=links.size)
        used = demand > 0
        share = np.full(links.size, np.inf)
        share[used] = cap_left[used] / demand[used]
        bottleneck = int(np.argmin(share))
        delta = max(float(share[bottleneck]), 0.0)
        level += delta
        cap_left -= demand * delta
        saturated = used & (cap_left <= cap_tol)
        saturated[bottleneck] = True
        freeze = sub[saturated[link_idx]]
        rate[freeze] = level
        unfrozen[freeze] = False
        keep = unfrozen[sub]
        sub, w, link_idx = sub[keep], w[keep], link_idx[keep]
    return rate


@dataclass
class _Running:
    """A step in flight."""

    job: int
    index: int
    flows: FlowSet
    start: float
    remaining: int
    finish: np.ndarray
    isolated: bool
    events: int = 0


@dataclass
class _StepInfo:
    """Per distinct FlowSet: routing and static measures."""

    routing: Routing
    ideal: float
    congestion: float
    link_bytes: np.ndarray


class _Active:
    """Active subflows as parallel arrays plus their sparse link incidence."""

    def __init__(self) -> None:
        self.rem = np.zeros(0)
        self.rate = np.zeros(0)
        self.owner = np.zeros(0, dtype=np.int64)
        self.flow = np.zeros(0, dtype=np.int64)
        self.e_sub = np.zeros(0, dtype=np.int64)
        self.e_link = np.zeros(0, dtype=np.int64)
        self.e_w = np.zeros(0)

    def __len__(self) -> int:
        return int(self.rem.size)

    def add(self, owner: int, routing: Routing) -> None:
        offset = len(self)
        self.rem = np.concatenate([self.rem, routing.size])
        self.rate = np.concatenate([self.rate, np.zeros(routing.n_sub)])
        self.owner = np.concatenate([self.owner, np.full(routing.n_sub, owner, dtype=np.int64)])
        self.flow = np.concatenate([self.flow, routing.flow])
        self.e_sub = np.concatenate([self.e_sub, routing.entry_sub + offset])
        self.e_link = np.concatenate([self.e_link, routing.entry_link])
        self.e_w = np.concatenate([self.e_w, routing.entry_weight])

    def remove(self, done: np.ndarray) -> None:
        keep = ~done
        new_index = np.cumsum(keep) - 1
        entries = keep[self.e_sub]
        self.e_sub = new_index[self.e_sub[entries]]
        self.e_link, self.e_w = self.e_link[entries], self.e_w[entries]
        self.rem, self.rate = self.rem[keep], self.rate[keep]
        self.owner, self.flow = self.owner[keep], self.flow[keep]


def simulate(topology: LeafSpine, jobs: list[Job], policy: PathPolicy, replay: bool = True,
             ) -> SimulationResult:
    """Run ``jobs`` (possibly concurrent) on ``topology`` with ``policy``; deterministic."""
    wall0 = time.perf_counter()
    if not jobs:
        raise TrafficError("nothing to simulate: no jobs given")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise TrafficError(f"job names must be unique, found {names}")
    for job in jobs:
        if not job.steps:
            raise TrafficError(f"job {job.name!r} has no steps")
        if job.max_host() >= topology.hosts:
            raise TrafficError(f"job {job.name!r} uses host {job.max_host()} but the fabric has "
                               f"{topology.hosts} hosts (0..{topology.hosts - 1})")
        if job.start < 0:
            raise TrafficError(f"job {job.name!r} starts at {job.start} s; start must be >= 0")

    info: dict[int, _StepInfo] = {}

    def step_info(flows: FlowSet) -> _StepInfo:
        key = id(flows)
        if key not in info:
            routing = policy.route(topology, flows)
            info[key] = _StepInfo(routing, ideal_step_seconds(topology, flows),
                                  float(link_congestion(topology, flows, routing).max()),
                                  routing.link_bytes(topology.num_links))
        return info[key]

    capacity = topology.capacity
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0
    for j, job in enumerate(jobs):
        heapq.heappush(heap, (job.start, _ARRIVAL, seq, j, 0))
        seq += 1
    active = _Active()
    running: dict[int, _Running] = {}
    run_ids = 0
    cache: dict[int, tuple[float, np.ndarray, int]] = {}  # id(FlowSet) -> (seconds, fct, events)
    records: list[tuple[int, int, float, float, np.ndarray]] = []
    job_end = [0.0] * len(jobs)
    link_bytes = np.zeros(topology.num_links)
    simulated = replayed = 0
    now = 0.0

    def finish_step(r: _Running, end: float) -> None:
        fct = r.finish - r.start
        fct.setflags(write=False)
        records.append((r.job, r.index, r.start, end, fct))
        if r.isolated and replay:
            cache.setdefault(id(r.flows), (end - r.start, fct, r.events))
        next_step(r.job, r.index, end)

    def next_step(j: int, index: int, end: float) -> None:
        nonlocal seq
        if index + 1 < len(jobs[j].steps):
            heapq.heappush(heap, (end, _CONTINUATION, seq, j, index + 1))
            seq += 1
        else:
            job_end[j] = end

    while heap or len(active):
        t_ext = heap[0][0] if heap else np.inf
        changed = False
        floor = 0.0
        if len(active):
            ttf = active.rem / active.rate
            dt = float(ttf.min())
            if now + dt <= t_ext:
                done = ttf <= dt * (1 + _REL_TOL) + 1e-18
                now += dt
                active.rem -= active.rate * dt
                floor = float(active.rate[done].min())
                finished_owner = active.owner[done]
                finished_flow = active.flow[done]
                simulated += int(done.sum())
                active.remove(done)
                changed = True
                for owner in np.unique(finished_owner).tolist():
                    r = running[owner]
                    mine = finished_owner == owner
                    r.finish[finished_flow[mine]] = now
                    r.remaining -= int(mine.sum())
                    r.events += int(mine.sum())
                    if r.remaining == 0:
                        del running[owner]
                        finish_step(r, now)
            else:
                active.rem -= active.rate * (t_ext - now)
                now = t_ext
        else:
            now = max(now, t_ext)
        while heap and heap[0][0] <= now:
            _, _, _, j, index = heapq.heappop(heap)
            flows = jobs[j].steps[index]
            si = step_info(flows)
            link_bytes += si.link_bytes
            hit = cache.get(id(flows))
            if hit is not None and not len(active) and (not heap or heap[0][0] >= now + hit[0]):
                seconds, fct, events = hit
                records.append((j, index, now, now + seconds, fct))
                replayed += events + 1
                next_step(j, index, now + seconds)
                continue
            simulated += 1
            if si.routing.n_sub == 0:
                records.append((j, index, now, now, np.zeros(0)))
                next_step(j, index, now)
                continue
            isolated = not running
            for other in running.values():
                other.isolated = False
            running[run_ids] = _Running(j, index, flows, now, si.routing.n_sub,
                                        np.full(len(flows), now), isolated)
            active.add(run_ids, si.routing)
            run_ids += 1
            changed = True
            floor = 0.0
        if changed and len(active):
            active.rate = max_min_rates(len(active), active.e_sub, active.e_link, active.e_w, capacity,
                                        active.rate, floor)

    records.sort(key=lambda rec: (rec[0], rec[1]))
    steps = [StepRecord(jobs[j].name, i, s, e, info[id(jobs[j].steps[i])].ideal,
                        info[id(jobs[j].steps[i])].congestion) for j, i, s, e, _ in records]
    ideal_end = [job.start + sum(info[id(s)].ideal for s in job.steps) for job in jobs]
    t0 = min(job.start for job in jobs)
    result = SimulationResult(
        policy=policy.name,
        topology=topology.describe(),
        cct_seconds=max(job_end) - t0,
        ideal_cct_seconds=max(ideal_end) - t0,
        max_congestion=max(si.congestion for si in info.values()),
        splits=max(si.routing.splits for si in info.values()),
        job_cct={job.name: job_end[j] - job.start for j, job in enumerate(jobs)},
        steps=steps,
        flow_fct=[rec[4] for rec in records],
        link_bytes=link_bytes,
        link_capacity=np.array(capacity),
        events_simulated=simulated,
        events_replayed=replayed,
        wall_seconds=time.perf_counter() - wall0,
    )
    log.debug("simulated %s: cct %.6g s, %d events simulated, %d replayed, %.3f s wall", policy.name,
              result.cct_seconds, simulated, replayed, result.wall_seconds)
    return result
