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

A :class:`~netsim.transport_model.TransportModel` makes the fluid real: flows carry on-wire bytes (headers
per packet), links run at ``rate_efficiency`` of their rate, less when several subflows share them, and
every step's flows start only after the step's latency (start-up plus propagation), and a step driving
several subflows per host lasts at least their start-up. FCTs count from the step's start, so they include
that latency. The default is the ideal model (pure fluid, zero latency).
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
from netsim.transport_model import IDEAL, TransportModel

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
    """A step whose flows are in flight; ``start`` is when the step was requested (before its latency)."""

    job: int
    index: int
    flows: FlowSet
    start: float
    remaining: int
    finish: np.ndarray
    isolated: bool
    not_before: float
    events: int = 0


@dataclass
class _StepInfo:
    """Per distinct FlowSet: routing, rate-limited on-wire subflow bytes, latency and static measures."""

    routing: Routing
    wire_size: np.ndarray
    latency: float
    subflow_floor: float
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

    def add(self, owner: int, routing: Routing, wire_size: np.ndarray) -> None:
        offset = len(self)
        self.rem = np.concatenate([self.rem, wire_size])
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


def _validate(topology: LeafSpine, jobs: list[Job]) -> None:
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


class _Simulation:
    """One run of the event loop; :func:`simulate` is its public face.

    Heap entries are ``(time, priority, seq, job, step, requested, ready)``: a step is *requested* when the
    previous one ends (or the job starts); its flows start ``latency`` later, when its entry is pushed
    again with ``ready`` set.
    """

    def __init__(self, topology: LeafSpine, jobs: list[Job], policy: PathPolicy, replay: bool,
                 transport: TransportModel) -> None:
        self.topology, self.jobs, self.policy, self.replay, self.transport = topology, jobs, policy, replay, transport
        self.capacity = np.asarray(topology.capacity) * transport.rate_efficiency
        self.info: dict[FlowSet, _StepInfo] = {}
        self.heap: list[tuple[float, int, int, int, int, float, bool]] = []
        self.seq = 0
        self.active = _Active()
        self.running: dict[int, _Running] = {}
        self.run_ids = 0
        self.cache: dict[FlowSet, tuple[float, np.ndarray, int]] = {}  # FlowSet -> (seconds, fct, events)
        self.records: list[tuple[int, int, float, float, np.ndarray]] = []
        self.job_end = [0.0] * len(jobs)
        self.link_bytes = np.zeros(topology.num_links)
        self.simulated = self.replayed = 0
        self.now = 0.0

    def step_info(self, flows: FlowSet, job_steps: int = 1) -> _StepInfo:
        """Routing and static measures of a FlowSet, computed once per distinct FlowSet.

        ``job_steps`` is the length of the job the FlowSet belongs to (the burst is spread over it).
        """
        if flows not in self.info:
            topo, model = self.topology, self.transport
            routing = self.policy.route(topo, flows)
            wire = model.wire_bytes(routing.size)
            rate_limited, latency, floor, burst = wire, 0.0, 0.0, model.burst_bytes / job_steps
            if len(flows):
                sent_by = flows.src[routing.flow]
                per_host = np.bincount(sent_by).max()
                if burst > 0:  # each host's share of the burst, split evenly among its subflows
                    rate_limited = np.maximum(wire - burst / np.bincount(sent_by)[sent_by], 0.0)
                hops = 4 if bool((topo.leaf_of(flows.src) != topo.leaf_of(flows.dst)).any()) else 2
                latency, floor = model.step_latency(hops), model.subflow_floor(int(per_host))
            ideal = ideal_step_seconds(topo, flows if model.is_ideal else FlowSet.build(
                flows.src, flows.dst, model.wire_bytes(flows.size), flows.port))
            ideal = max(ideal - burst / topo.host_capacity, 0.0) / model.rate_efficiency
            self.info[flows] = _StepInfo(
                routing, rate_limited, latency, floor, latency + max(ideal, floor), float(link_congestion(topo, flows, routing).max()),
                np.bincount(routing.entry_link, weights=wire[routing.entry_sub] * routing.entry_weight,
                            minlength=topo.num_links))
        return self.info[flows]

    def push(self, time_s: float, priority: int, job: int, index: int, requested: float,
             ready: bool = False) -> None:
        heapq.heappush(self.heap, (time_s, priority, self.seq, job, index, requested, ready))
        self.seq += 1

    def finish_step(self, r: _Running, end: float) -> None:
        end = max(end, r.not_before)  # the hosts are still starting subflows
        fct = r.finish - r.start
        fct.setflags(write=False)
        self.records.append((r.job, r.index, r.start, end, fct))
        if r.isolated and self.replay:
            self.cache.setdefault(r.flows, (end - r.start, fct, r.events))
        self.next_step(r.job, r.index, end)

    def next_step(self, j: int, index: int, end: float) -> None:
        if index + 1 < len(self.jobs[j].steps):
            self.push(end, _CONTINUATION, j, index + 1, end)
        else:
            self.job_end[j] = end

    def advance(self, t_ext: float) -> tuple[bool, float]:
        """Move time to the next completion or to ``t_ext``; return (subflows changed, refill floor)."""
        active = self.active
        if not len(active):
            self.now = max(self.now, t_ext)
            return False, 0.0
        ttf = active.rem / active.rate
        dt = float(ttf.min())
        if self.now + dt > t_ext:
            active.rem -= active.rate * (t_ext - self.now)
            self.now = t_ext
            return False, 0.0
        done = ttf <= dt * (1 + _REL_TOL) + 1e-18
        self.now += dt
        active.rem -= active.rate * dt
        floor = float(active.rate[done].min())
        finished_owner, finished_flow = active.owner[done], active.flow[done]
        self.simulated += int(done.sum())
        active.remove(done)
        for owner in np.unique(finished_owner).tolist():
            r = self.running[owner]
            mine = finished_owner == owner
            r.finish[finished_flow[mine]] = self.now
            r.remaining -= int(mine.sum())
            r.events += int(mine.sum())
            if r.remaining == 0:
                del self.running[owner]
                self.finish_step(r, self.now)
        return True, floor

    def start_due(self) -> bool:
        """Start (or replay, or delay by their latency) every step due now; True if subflows were added."""
        added = False
        while self.heap and self.heap[0][0] <= self.now:
            _, priority, _, j, index, requested, ready = heapq.heappop(self.heap)
            flows = self.jobs[j].steps[index]
            si = self.step_info(flows, len(self.jobs[j].steps))
            if not ready:
                self.link_bytes += si.link_bytes
                hit = self.cache.get(flows)
                if (hit is not None and not len(self.active)
                        and (not self.heap or self.heap[0][0] >= self.now + hit[0])):
                    seconds, fct, events = hit
                    self.records.append((j, index, self.now, self.now + seconds, fct))
                    self.replayed += events + 1
                    self.next_step(j, index, self.now + seconds)
                    continue
                self.simulated += 1
                if si.latency > 0 and si.routing.n_sub:
                    self.push(self.now + si.latency, priority, j, index, requested, ready=True)
                    continue
            if si.routing.n_sub == 0:
                self.records.append((j, index, self.now, self.now, np.zeros(0)))
                self.next_step(j, index, self.now)
                continue
            isolated = not self.running
            for other in self.running.values():
                other.isolated = False
            self.running[self.run_ids] = _Running(j, index, flows, requested, si.routing.n_sub,
                                                  np.full(len(flows), self.now), isolated,
                                                  self.now + si.subflow_floor)
            self.active.add(self.run_ids, si.routing, si.wire_size)
            self.run_ids += 1
            added = True
        return added

    def rates(self, floor: float) -> np.ndarray:
        """Max-min rates of the active subflows on the transport's effective link capacities."""
        active = self.active
        if self.transport.sharing_loss == 0:
            return max_min_rates(len(active), active.e_sub, active.e_link, active.e_w, self.capacity,
                                 active.rate, floor)
        sharing = np.bincount(active.e_link, minlength=self.capacity.size)
        capacity = self.capacity * self.transport.sharing_efficiency(sharing)
        return max_min_rates(len(active), active.e_sub, active.e_link, active.e_w, capacity)

    def run(self) -> None:
        for j, job in enumerate(self.jobs):
            self.push(job.start, _ARRIVAL, j, 0, job.start)
        while self.heap or len(self.active):
            changed, floor = self.advance(self.heap[0][0] if self.heap else np.inf)
            if self.start_due():
                changed, floor = True, 0.0
            if changed and len(self.active):
                self.active.rate = self.rates(floor)

    def result(self, wall0: float) -> SimulationResult:
        jobs, info = self.jobs, self.info
        self.records.sort(key=lambda rec: (rec[0], rec[1]))
        steps = [StepRecord(jobs[j].name, i, s, e, info[jobs[j].steps[i]].ideal, info[jobs[j].steps[i]].congestion)
                 for j, i, s, e, _ in self.records]
        ideal_end = [job.start + sum(info[s].ideal for s in job.steps) for job in jobs]
        t0 = min(job.start for job in jobs)
        return SimulationResult(
            policy=self.policy.name,
            topology=self.topology.describe(),
            cct_seconds=max(self.job_end) - t0,
            ideal_cct_seconds=max(ideal_end) - t0,
            max_congestion=max(si.congestion for si in info.values()),
            splits=max(si.routing.splits for si in info.values()),
            job_cct={job.name: self.job_end[j] - job.start for j, job in enumerate(jobs)},
            steps=steps,
            flow_fct=[rec[4] for rec in self.records],
            link_bytes=self.link_bytes,
            link_capacity=np.array(self.topology.capacity),
            events_simulated=self.simulated,
            events_replayed=self.replayed,
            wall_seconds=time.perf_counter() - wall0,
            transport=self.transport,
        )


def simulate(topology: LeafSpine, jobs: list[Job], policy: PathPolicy, replay: bool = True,
             transport: TransportModel = IDEAL) -> SimulationResult:
    """Run ``jobs`` (possibly concurrent) on ``topology`` with ``policy`` over ``transport``; deterministic."""
    wall0 = time.perf_counter()
    _validate(topology, jobs)
    sim = _Simulation(topology, jobs, policy, replay, transport)
    sim.run()
    result = sim.result(wall0)
    log.debug("simulated %s: cct %.6g s, %d events simulated, %d replayed, %.3f s wall", policy.name,
              result.cct_seconds, result.events_simulated, result.events_replayed, result.wall_seconds)
    return result
