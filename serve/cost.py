"""What each request costs, by stage: the CPU time each process spends on it (docs/cost.md).

A request carries a `RequestCost` (a context variable, so the ranker client, a source's
worker thread and the pipeline charge the same ledger without passing it around):

- **measured**: the CPU clock of the thread doing the work (`time.thread_time`). In the
  replica, every step of every asyncio task is metered (`meter_loop`: a task factory wraps
  each task's coroutine): a step's CPU goes to the request whose ledger the task carries,
  so the web framework, parsing, the pipeline, the ranker client and the response are all
  the request's `ingress`, and work between requests (background tasks, Ray's own threads)
  is no request's. Inside a step, `section` splits out other stages (an inline candidate
  source, the in-process ranker). Off the event loop, `section` measures the block: a
  pooled source in its worker thread, the review queue's write. Without a metered loop
  (tests, the in-process benchmark floor) `section` and `Lap` measure the ingress's
  synchronous parts themselves;
- **shared by rows**: the ranker on Triton runs batches of several requests. Its compute
  time per row, per model, comes from Triton's own statistics (`TritonRates`), and a
  request is charged its rows times that rate. The moderation batcher charges each item of
  a batch its share of the batch's measured CPU (`serve/moderation/deployment.py`).

At the end of a request the ledger goes to the `funnel_cost_core_seconds_total` counter
(`monitoring.metrics.observe_cost`) and its total to the rollout's per-variant tally.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("funnel.cost")

# the stages a request's CPU is charged to (label `stage` of funnel_cost_core_seconds_total)
INGRESS = "ingress"
RANKER = "ranker"
SHADOW = "shadow"
MODERATION_TEXT = "moderation_text"
MODERATION_IMAGE = "moderation_image"
# the event loop's own work between task steps (waking tasks, I/O callbacks), shared among
# requests by their number of steps: allocated, not measured per request
EVENT_LOOP = "event_loop"


def source_stage(name: str) -> str:
    return f"source:{name}"


@dataclass
class RequestCost:
    """One request's core-seconds by (stage, model). `variant`: the rollout variant that
    served it (the ranker's, for a feed). `stage_override`: charge every section to this
    stage (a shadow comparison is all `shadow`, whatever parts of the pipeline it runs).
    `ranker_model`: the bundle version of the ranker being called (set by the pipeline
    around the call, read by the ranker client)."""

    route: str
    variant: str = "primary"
    stage_override: str | None = None
    core_s: dict[tuple[str, str], float] = field(default_factory=dict)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)  # (triton model, version)
    ranker_model: str = ""
    gpu_s: dict[tuple[str, str], float] = field(default_factory=dict)  # GPU-seconds
    steps: int = 0  # metered task steps of this request (the event loop's share)

    def charge(self, stage: str, seconds: float, model: str = "") -> None:
        if seconds <= 0:
            return
        key = (self.stage_override or stage, model)
        self.core_s[key] = self.core_s.get(key, 0.0) + seconds

    def ranker_rows(self, triton_model: str, n: int) -> None:
        """`n` rows sent to Triton's `triton_model`: priced at the end by `TritonRates`."""
        key = (triton_model, self.ranker_model)
        self.rows[key] = self.rows.get(key, 0) + n

    def price_rows(self, rates: TritonRates | None) -> None:
        """Turn the rows sent to Triton into seconds at each model's latest rate: core-
        seconds, or GPU-seconds for a model whose Triton instances are on a GPU."""
        if rates is not None:
            for (name, version), n in self.rows.items():
                sec = n * rates.per_row(name)
                if rates.on_gpu(name):
                    key = (self.stage_override or RANKER, version)
                    self.gpu_s[key] = self.gpu_s.get(key, 0.0) + sec
                else:
                    self.charge(RANKER, sec, version)
        self.rows.clear()

    @property
    def total_s(self) -> float:
        return sum(self.core_s.values())

    def finish(self) -> None:
        """The request is answered: record its cost (`funnel_cost_core_seconds_total`). In a
        metered task step, at the end of the step, whose CPU is the request's too."""
        done = getattr(_STEP, "done", None)
        if done is not None:
            done.append(self)
        else:
            self.record()

    def _charge_loop_share(self) -> None:
        share = getattr(_LOOP, "per_step_s", 0.0)
        if self.steps and share > 0:
            self.charge(EVENT_LOOP, self.steps * share)
        self.steps = 0

    def record(self) -> None:
        if not _RECORDING["on"]:
            return
        from monitoring import metrics

        metrics.observe_cost(self.route, self.variant, self.core_s, gpu_s=self.gpu_s)


_CURRENT: ContextVar[RequestCost | None] = ContextVar("funnel_request_cost", default=None)
# args.cost.enabled: False, nothing is metered or recorded (the ledgers stay, unrecorded)
_RECORDING = {"on": True}


def set_recording(on: bool) -> None:
    """This process records costs (the default), or not (`args.cost.enabled: false`)."""
    _RECORDING["on"] = on


def recording() -> bool:
    return _RECORDING["on"]


def current() -> RequestCost | None:
    return _CURRENT.get()


@contextlib.contextmanager
def charging(cost: RequestCost | None) -> Iterator[RequestCost | None]:
    """Make `cost` the ledger of the code inside (and of the tasks it starts)."""
    token = _CURRENT.set(cost)
    try:
        yield cost
    finally:
        _CURRENT.reset(token)


# Inside a metered task step on this thread: the seconds sections have charged to stages
# other than `ingress` during the step (the step charges the rest); None: not in one.
_STEP = threading.local()
# per metered loop thread: steps and their CPU so far, and the loop's own CPU per step
_LOOP = threading.local()


def _account(c: RequestCost, stage: str, seconds: float, model: str) -> None:
    inner = getattr(_STEP, "inner", None)
    if inner is None:
        c.charge(stage, seconds, model)
    elif stage != INGRESS:  # the step charges the ingress's share itself
        c.charge(stage, seconds, model)
        _STEP.inner = inner + seconds


@contextlib.contextmanager
def request(route: str) -> Iterator[RequestCost]:
    """The current request's ledger; or, when there is none, a new one for `route` that
    this block owns: current inside it, and recorded when it ends."""
    outer = _CURRENT.get()
    if outer is not None:
        yield outer
        return
    c = RequestCost(route)
    with charging(c):
        try:
            yield c
        finally:
            c.finish()


@contextlib.contextmanager
def section(stage: str, model: str = "", cost: RequestCost | None = None) -> Iterator[None]:
    """Charge this thread's CPU over the block to `stage` of the current request (nothing
    when no request is being charged). The block must not await: the event loop would run
    other requests in between, on the same thread."""
    c = cost if cost is not None else _CURRENT.get()
    if c is None:
        yield
        return
    t0 = time.thread_time()
    try:
        yield
    finally:
        _account(c, stage, time.thread_time() - t0, model)


class Lap:
    """This thread's CPU in laps, for code with awaits between its sections: `charge(stage)`
    charges the CPU since the last mark to the current request, `mark()` restarts the lap
    after an await (what the loop ran meanwhile was other requests')."""

    def __init__(self, cost: RequestCost | None = None) -> None:
        self.cost = cost if cost is not None else _CURRENT.get()
        self.t = time.thread_time()

    def mark(self) -> None:
        self.t = time.thread_time()

    def charge(self, stage: str, model: str = "") -> None:
        now = time.thread_time()
        if self.cost is not None:
            _account(self.cost, stage, now - self.t, model)
        self.t = now


class _Metered(collections.abc.Coroutine):
    """A task's coroutine, each step's CPU charged to the ledger the task carries at the end
    of the step (or had at its start: the step that ends a request resets it)."""

    __slots__ = ("_coro",)

    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def _step(self, fn: Callable[..., Any], *args: Any) -> Any:
        before = _CURRENT.get()
        outer, outer_done = getattr(_STEP, "inner", None), getattr(_STEP, "done", None)
        _STEP.inner, _STEP.done = 0.0, []
        t0 = time.thread_time()
        try:
            return fn(*args)
        finally:
            spent = time.thread_time() - t0
            inner, done = _STEP.inner, _STEP.done
            _STEP.inner, _STEP.done = outer, outer_done
            c = _CURRENT.get() or before
            _LOOP.steps = getattr(_LOOP, "steps", 0) + 1
            _LOOP.step_cpu = getattr(_LOOP, "step_cpu", 0.0) + spent
            if c is not None:
                c.charge(INGRESS, spent - inner)
                c.steps += 1
            for ledger in done:  # finished in this step: recorded with the step's CPU
                ledger._charge_loop_share()
                ledger.record()


    def send(self, value: Any) -> Any:
        return self._step(self._coro.send, value)

    def throw(self, *args: Any) -> Any:
        return self._step(self._coro.throw, *args)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._coro.__await__()


async def _loop_share(every_s: float = 1.0) -> None:
    """The loop thread's CPU between task steps, per step, every `every_s` (runs on the
    loop: `thread_time` reads the loop's own thread). A request is charged its steps times
    the latest figure when it finishes."""
    cpu0 = time.thread_time()
    steps0, step_cpu0 = getattr(_LOOP, "steps", 0), getattr(_LOOP, "step_cpu", 0.0)
    while True:
        await asyncio.sleep(every_s)
        cpu, steps, step_cpu = (time.thread_time(), getattr(_LOOP, "steps", 0),
                                getattr(_LOOP, "step_cpu", 0.0))
        if steps > steps0:
            _LOOP.per_step_s = max(0.0, (cpu - cpu0) - (step_cpu - step_cpu0)) / (
                steps - steps0)
        cpu0, steps0, step_cpu0 = cpu, steps, step_cpu


def meter_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Meter every task `loop` creates from now on (see the module's docstring); False when
    it already is, or this process records no costs. A task factory the loop had is kept,
    and called with the wrapped coroutine."""
    previous = loop.get_task_factory()
    if getattr(previous, "funnel_metered", False) or not _RECORDING["on"]:
        return False

    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Future[Any]:
        wrapped = _Metered(coro)
        if previous is not None:
            return previous(lp, wrapped, **kw)
        return asyncio.Task(wrapped, loop=lp, **kw)

    factory.funnel_metered = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)
    loop.create_task(_loop_share(), context=contextvars.Context())
    log.info("cost: metering each request's CPU on this event loop (%s)", type(loop).__name__)
    return True


@dataclass
class _ModelStats:
    ns: int = 0  # Triton's cumulative compute time (input + infer + output), ns
    rows: int = 0  # its cumulative inference count (rows)
    per_row_s: float = 0.0


class TritonRates:
    """Each Triton model's compute seconds per row, from the differences of Triton's
    cumulative statistics between two polls (`update`, fed by the replica's background
    task). A request's rows times the rate is its share of the batches it was part of:
    rows of one batch share its time in proportion to their number. Until the first two
    polls a model's rate is 0 (its rows go uncharged: overhead)."""

    def __init__(self) -> None:
        self._stats: dict[str, _ModelStats] = {}
        self.models: set[str] = set()  # the Triton models this replica has called
        self.kinds: dict[str, bool] = {}  # model -> its instances are on a GPU

    def on_gpu(self, name: str) -> bool:
        return self.kinds.get(name, False)

    def per_row(self, name: str) -> float:
        self.models.add(name)
        s = self._stats.get(name)
        return s.per_row_s if s is not None else 0.0

    def update(self, name: str, compute_ns: int, rows: int) -> None:
        """Triton's cumulative compute ns and inference count for `name`, as polled now."""
        prev = self._stats.get(name)
        if prev is None:
            self._stats[name] = _ModelStats(compute_ns, rows)
            return
        d_ns, d_rows = compute_ns - prev.ns, rows - prev.rows
        if d_ns < 0 or d_rows < 0:  # Triton restarted, or the model was reloaded
            self._stats[name] = _ModelStats(compute_ns, rows, prev.per_row_s)
            return
        rate = d_ns / 1e9 / d_rows if d_rows > 0 else prev.per_row_s
        self._stats[name] = _ModelStats(compute_ns, rows, rate)


def triton_on_gpu(config: dict[str, Any]) -> bool:
    """Whether a `get_model_config(as_json=True)` answer puts the model's instances on a
    GPU (its compute time is then GPU time)."""
    cfg = config.get("config", config)
    return any(g.get("kind") == "KIND_GPU" for g in cfg.get("instance_group") or [])


def triton_compute(stats: dict[str, Any]) -> tuple[int, int]:
    """(compute ns, rows) summed over the versions in a `get_inference_statistics(
    as_json=True)` answer for one model."""
    ns = rows = 0
    for m in stats.get("model_stats") or []:
        inf = m.get("inference_stats", {})
        for part in ("compute_input", "compute_infer", "compute_output"):
            ns += int(inf.get(part, {}).get("ns", 0))
        rows += int(m.get("inference_count", 0))
    return ns, rows


async def poll_triton_rates(triton: Any, rates: TritonRates, every_s: float) -> None:
    """Read Triton's statistics for every model this process has called, every `every_s`,
    into `rates` (`triton`: a `TritonRanker`, which asks its server). Runs until cancelled;
    while Triton is away, the last rates stay in force."""
    rates.models.add(triton.model_name)  # the primary's: a rate before its first request
    failing = False
    while True:
        for name in sorted(rates.models):
            try:
                if name not in rates.kinds:
                    rates.kinds[name] = await triton.on_gpu(name)
                ns, rows = await triton.compute_stats(name)
            except Exception as e:
                if not failing:
                    log.warning("cost: cannot read Triton's statistics: %s", e)
                failing = True
                break
            rates.update(name, ns, rows)
            failing = False
        await asyncio.sleep(every_s)


def shadow_cost(variant: str) -> RequestCost:
    """The ledger of one comparison of `variant`: every section it runs is `shadow`."""
    return RequestCost("shadow", variant=variant, stage_override=SHADOW)
