"""The load generator: one workload through one or more writers, measured.

Closed loop (no target rate): `concurrency` lanes each send a batch, wait for it, send
the next. Open loop (a target rate): batch k is due at t0 + k * batch_size / rate,
whatever happened to earlier batches. It is sent at that moment unless `concurrency`
batches are already in flight; then it is sent as soon as one finishes. The schedule
never shifts, and latency is also measured from the due time (wrk2's correction for
coordinated omission), so a writer that cannot keep up shows as growing latency, send
delay and a rate shortfall, never as a quietly slower schedule.

The runner keeps the clock; writers only write. Batches started during warm-up are
written but not measured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import structlog

from bench.config import BenchmarkConfig
from bench.environment import host_load, host_load_warnings, host_sample
from bench.intervals import Sample, intervals, seconds_of
from bench.quotas import project
from bench.results import (
    LatencySummary,
    RepeatStats,
    RunResult,
    SecondStats,
    StreamStats,
    VisibilitySummary,
    WireCount,
    WriterResult,
)
from bench.stats import Latencies, exact_percentile, min_batches, unsupported_percentiles
from bench.workload import BatchFactory
from dwbench.errors import (
    DirectWriteError,
    PoolWaitError,
    RequestTooLargeError,
    WriterUnavailableError,
)
from workloads.base import Workload
from workloads.registry import WorkloadRegistry
from writers.base import WIRE_STAND_IN, DataWriterInterface, WireReading

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
ProgressCallback = Callable[[dict[str, Any]], None]
# Awaited by a writer's part once its writers are open and prepared, before its clock starts:
# the clients of a run start measuring together (bench.clients).
Gate = Callable[[str], Awaitable[None]]
VISIBILITY_TIMEOUT_S = 30.0
MAX_ERROR_SAMPLES = 5
# A writer that stores rows is warned about when its sample is small: fewer batches than
# p95 needs (bench.stats: 200), or a measured window under 10 s (too short to see how
# throughput varies second to second). The null writer is the harness ceiling, not a target.
FEW_BATCHES = min_batches(95.0)
SHORT_WINDOW_S = 10.0
# A window under SHORT_WINDOW_S is charted in sub-second buckets (one second of a 2 s run is
# half the run): each batch's ack is kept, up to this many, to bucket them at the end.
SHORT_SERIES_MAX = 100_000
_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5)
SHORT_SERIES_BUCKETS = 40
YIELD_EVERY_BATCHES = 32  # closed loop: let the event loop run at least this often


def bucket_width(elapsed: float) -> float:
    """The narrowest round width that cuts `elapsed` into at most SHORT_SERIES_BUCKETS."""
    return next((b for b in _BUCKETS_S if elapsed / b <= SHORT_SERIES_BUCKETS), 1.0)


class WriterSource(Protocol):
    async def get(self, name: str, stream: int = 0) -> DataWriterInterface:
        """The writer `name` for stream `stream`: one instance (its own SDK stream,
        connection or pool) per stream, the same instance for the same stream."""
        ...


def _kind(exc: BaseException) -> str:
    if isinstance(exc, PoolWaitError):  # the writer's own backpressure, not an outage
        return "pool_wait"
    if isinstance(exc, WriterUnavailableError):
        return "unavailable"
    if isinstance(exc, RequestTooLargeError):
        return "too_large"
    if isinstance(exc, DirectWriteError):
        return "write_failed"
    return f"unexpected {type(exc).__name__}"


@dataclass
class _Second:
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class _StreamCount:
    """What one stream had acknowledged (measured batches only)."""

    rows: int = 0
    bytes: int = 0
    batches: int = 0
    failed: int = 0

    def add(self, rows: int, size: int) -> None:
        self.rows += rows
        self.bytes += size
        self.batches += 1

    def stats(self, client: int, stream: int, elapsed: float) -> StreamStats:
        return StreamStats(
            client=client,
            stream=stream,
            rows=self.rows,
            bytes=self.bytes,
            batches=self.batches,
            failed_batches=self.failed,
            rows_per_s=round(self.rows / elapsed, 1) if elapsed > 0 else 0.0,
            mb_per_s=round(self.bytes / 1e6 / elapsed, 4) if elapsed > 0 else 0.0,
        )


def _within(buckets: dict[int, _Second], elapsed: float, width: float) -> dict[int, _Second]:
    """The buckets of a window `elapsed` long, as copies: an ack on its very end (an index
    past the last bucket) counts in the last, so no bucket of zero span is reported."""
    last = max(0, math.ceil(round(elapsed / width, 6)) - 1)
    out: dict[int, _Second] = {}
    for index, b in sorted(buckets.items()):
        into = out.setdefault(min(index, last), _Second())
        into.rows += b.rows
        into.bytes += b.bytes
        into.batches += b.batches
        into.errors += b.errors
        into.latencies_ms.extend(b.latencies_ms)
    return out


@dataclass
class _WallSecond:
    rows: int = 0
    bytes: int = 0
    batches: int = 0
    errors: int = 0
    hist: Latencies | None = None  # while this second is the open one
    encoded: str | None = None  # once closed (None: no ack in it)


class _WallSeconds:
    """Acks and failures by absolute wall-clock second (UTC epoch), each second's service
    latencies in an HDR histogram, so two workers' seconds can be added (bench.merge).

    Acks come in clock order, so one second is open at a time; it is encoded when an ack
    lands in another (a live histogram per second of a long run would not fit in memory:
    each is ~190 KB). An ack for a closed second, should the clock step back, reopens it."""

    def __init__(self) -> None:
        self.seconds: dict[int, _WallSecond] = {}
        self._open: int | None = None

    def ack(self, epoch: int, rows: int, size: int, latency_s: float) -> None:
        second = self.seconds.setdefault(epoch, _WallSecond())
        if epoch != self._open:
            self._close()
            self._open = epoch
            second.hist = Latencies.decode(second.encoded) if second.encoded else Latencies()
            second.encoded = None
        assert second.hist is not None
        second.rows += rows
        second.bytes += size
        second.batches += 1
        second.hist.record(latency_s)

    def error(self, epoch: int) -> None:
        self.seconds.setdefault(epoch, _WallSecond()).errors += 1

    def _close(self) -> None:
        if self._open is not None:
            second = self.seconds[self._open]
            assert second.hist is not None
            second.encoded, second.hist = second.hist.encode(), None
        self._open = None

    def _latencies(self, second: _WallSecond) -> Latencies | None:
        if second.hist is not None:
            return second.hist
        return Latencies.decode(second.encoded) if second.encoded else None

    def series(self, start: float, elapsed: float) -> list[SecondStats]:
        """Every second of the window [start, start + elapsed) (epoch seconds); see
        wall_series."""
        return wall_series(
            start,
            elapsed,
            (
                WallCount(epoch, s.rows, s.bytes, s.batches, s.errors, self._latencies(s))
                for epoch, s in self.seconds.items()
            ),
        )


class WallCount(NamedTuple):
    """One absolute second's counts and latencies (None: no ack in it)."""

    epoch: int
    rows: int
    bytes: int
    batches: int
    errors: int
    hist: Latencies | None


def wall_series(start: float, elapsed: float, counts: Iterable[WallCount]) -> list[SecondStats]:
    """Counts added up by absolute second over the window [start, start + elapsed) (epoch
    seconds), every second of it listed, those without an ack at 0 rows; t counts from
    floor(start). A count outside the window goes to its nearest second (an ack on the
    window's very end counts in its last second, as in per_second)."""
    if elapsed <= 0:
        return []
    first = math.floor(start)
    end = start + elapsed
    last = max(first, math.ceil(end) - 1)
    folded: dict[int, _WallSecond] = {}
    for count in counts:
        into = folded.setdefault(min(max(count.epoch, first), last), _WallSecond())
        into.rows += count.rows
        into.bytes += count.bytes
        into.batches += count.batches
        into.errors += count.errors
        if count.hist is not None:
            if into.hist is None:
                into.hist = Latencies()
            into.hist.merge(count.hist)
    out = []
    for epoch in range(first, last + 1):
        second = folded.get(epoch) or _WallSecond()
        hist = second.hist if second.hist is not None and second.hist.count else None
        span = min(epoch + 1, end) - max(epoch, start)
        span = span if span > 0 else 1.0
        out.append(
            SecondStats(
                t=epoch - first,
                at_s=float(epoch - first),
                span_s=round(span, 6),
                rows_per_s=round(second.rows / span, 1),
                rows=second.rows,
                mib=round(second.bytes / 1048576, 4),
                batches=second.batches,
                errors=second.errors,
                p50_ms=round(hist.percentile_ms(50), 3) if hist else None,
                p99_ms=round(hist.percentile_ms(99), 3) if hist else None,
                epoch_s=epoch,
                bytes=second.bytes,
                histogram=hist.encode() if hist else None,
            )
        )
    return out


class _WriterRun:
    """The state and measurements of one writer's part of a run."""

    def __init__(
        self,
        name: str,
        config: BenchmarkConfig,
        workload: Workload,
        run_id: str,
        clock: Clock,
        cancel: asyncio.Event,
        repeat: int = 0,
        cpu_clock: Clock = time.process_time,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        client: int = 0,
        gate: Gate | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.gate = gate
        self.wall_clock = wall_clock
        self.sleep = sleep
        # The wall clock read once, with `started`: the perf clock times everything, and this
        # maps its instants to UTC epoch seconds (workers on different hosts line up by it).
        self.wall_started: float | None = None
        self.wall = _WallSeconds()
        self.cpu_clock = cpu_clock
        self.repeat = repeat
        self.config = config
        self.clock = clock
        self.cancel = cancel
        self.factory = BatchFactory(config, workload, run_id=run_id, source=name, client=client)
        self.table = self.factory.table
        # One writer instance per stream; `writer` is stream 0's (labels, visibility reads).
        self.writer: DataWriterInterface | None = None
        self.writers: list[DataWriterInterface] = []
        self.per_stream = [_StreamCount() for _ in range(config.streams)]
        self.status = "pending"
        self.phase = "pending"
        self.error: str | None = None
        self.service = Latencies()
        self.from_intended = Latencies()
        self.send_delay = Latencies()
        self.visibility = Latencies()
        self.visibility_timeouts = 0
        self.seconds: dict[int, _Second] = {}
        # (offset s, rows, bytes, latency ms) per measured ack while the window is short
        self.acks: list[tuple[float, int, int, float]] | None = []
        self.failed_at: list[float] = []
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.notes: list[str] = []  # the writer's, on how it could get ready (`reserve`)
        self.rows = 0
        self.bytes = 0
        self.batches = 0
        self.failed = 0
        self.warmup_rows = 0
        self.warmup_failed = 0
        self.in_flight = 0
        self.started = 0.0
        self.measure_start = math.inf
        self.last_completion = 0.0
        self.cpu_start = 0.0
        self.cpu_percent: float | None = None
        # CPU seconds of this process from the first measured send to the end
        self.cpu_measured_from: float | None = None
        self.cpu_measured_s: float | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._last_sample_at = -math.inf
        # Every row handed to the writer (warm-up and failed batches too), and the byte
        # counter of its interface read before the first and after the last batch.
        self.rows_sent = 0
        self.wire_start: WireReading | None = None
        self.wire_end: WireReading | None = None
        self.wire_problem: str | None = None

    # -- the run ---------------------------------------------------------------------

    async def run(self, source: WriterSource) -> None:
        try:
            for stream in range(self.config.streams):
                writer = await source.get(self.name, stream)
                if not self.writers:
                    self.writer = writer
                self.writers.append(writer)
                # Refused here, before anything is written: a path that cannot carry a type.
                await writer.prepare(self.table)
                # A pool sized to the concurrency, where the writer has one.
                note = await writer.reserve(self.config.concurrency)
                if note is not None and note not in self.notes:
                    self.notes.append(note)
        except DirectWriteError as exc:
            self.status, self.error = "unavailable", exc.message
            if self.gate is not None:
                await self.gate(self.name)  # the other clients need not wait for this one
            return
        self.wire_start = await self._wire_reading()
        # Objects alive now (the app, the batch pool) need no more garbage collection: a
        # full collection over them mid-run would show up as a latency spike.
        gc.collect()
        gc.freeze()
        if self.gate is not None:
            # Every client's writers are ready: they start together (bench.clients), the
            # collection above done, so the start spread is the barrier's own.
            self.phase = "ready"
            await self.gate(self.name)
        self.status = "running"
        self.started = self.clock()
        self.wall_started = self.wall_clock()
        self.measure_start = self.started + self.config.warmup_s
        self.phase = "warmup" if self.config.warmup_s > 0 else "measuring"
        self.cpu_start = self.cpu_clock()
        try:
            if self.config.closed_loop:
                await self._closed_loop()
            else:
                await self._open_loop()
        finally:
            self.factory.close()
            if self._sampler is not None:
                await self._sampler
            wall = max(self.clock() - self.started, 1e-9)
            cpu_now = self.cpu_clock()
            self.cpu_percent = round(100 * (cpu_now - self.cpu_start) / wall, 1)
            if self.cpu_measured_from is not None:
                self.cpu_measured_s = cpu_now - self.cpu_measured_from
            if self.wire_start is not None:
                self.wire_end = await self._wire_reading()
        self.phase = "done"
        if self.cancel.is_set():
            self.status = "cancelled"
        elif self.failed and not self.rows:
            self.status, self.error = "failed", "every measured batch failed"
        elif self.warmup_failed and not self.rows and not self.batches:
            # Batches slower than warm-up and window together (a target that blocks, then
            # fails) are all unmeasured: nothing was written, which is no completed run.
            self.status = "failed"
            self.error = (
                f"every batch failed ({self.warmup_failed:,} in the warm-up, none measured)"
            )
        else:
            self.status = "completed"

    async def _wire_reading(self) -> WireReading | None:
        """The streams' byte count: a stand-in's counter sees every stream (read once), a
        payload count is each writer instance's own (added up)."""
        assert self.writer is not None
        try:
            first = await self.writer.wire_bytes(self.table)
            if first is None or first.source == WIRE_STAND_IN or len(self.writers) == 1:
                return first
            others = [await w.wire_bytes(self.table) for w in self.writers[1:]]
        except DirectWriteError as exc:
            self.wire_problem = f"wire bytes not measured: {exc.message}"
            return None
        total = first.bytes + sum(r.bytes for r in others if r is not None)
        return WireReading(total, first.source)

    def wire_bytes(self) -> tuple[int, int, str] | None:
        """(bytes, rows sent, source) over the whole run; None when not measured."""
        start, end = self.wire_start, self.wire_end
        if start is None or end is None or not self.rows_sent:
            return None
        return end.bytes - start.bytes, self.rows_sent, end.source

    def wire_count(self) -> WireCount | None:
        start, end = self.wire_start, self.wire_end
        if start is None or end is None or not self.rows_sent:
            return None
        return WireCount(start=start.bytes, end=end.bytes, rows_sent=self.rows_sent)

    def _budget_left(self, now: float, measured_batches: int) -> bool:
        if self.cancel.is_set():
            return False
        cfg = self.config
        if cfg.duration_s is not None:
            return now < self.measure_start + cfg.duration_s
        return measured_batches < self.factory.measured_batches

    async def _closed_loop(self) -> None:
        counter = {"measured": 0, "k": 0}

        async def lane(stream: int) -> None:
            while True:
                now = self.clock()
                if not self._budget_left(now, counter["measured"]):
                    return
                measured = now >= self.measure_start
                if measured:
                    counter["measured"] += 1
                k = counter["k"]
                counter["k"] += 1
                last = self._is_last(measured, counter["measured"])
                batch = await self.factory.build(k, last=last)
                await self._send(batch, intended=None, measured=measured, stream=stream)
                if k % YIELD_EVERY_BATCHES == YIELD_EVERY_BATCHES - 1:
                    # A writer that never suspends (null) would hold the event loop for the
                    # whole run: progress, the app's requests and cancel all wait on it.
                    await asyncio.sleep(0)

        # `concurrency` lanes per stream.
        streams = range(self.config.streams)
        await asyncio.gather(*(lane(s) for s in streams for _ in range(self.config.concurrency)))

    def _is_last(self, measured: bool, measured_batches: int) -> bool:
        return (
            measured
            and self.config.duration_s is None
            and measured_batches == self.factory.measured_batches
        )

    async def _open_loop(self) -> None:
        """The run's schedule has batch g due at t0 + g x batch_size / rate; this client sends
        its batches g = k x clients + client, batch k on stream k mod streams, so the target
        rate is split exactly over clients and streams. Whether a batch is measured, and
        whether it is within the duration, is decided on its number (g x batch_size against
        seconds x rate), not on float clock sums, so the clients' shares add up exactly."""
        cfg = self.config
        assert cfg.rate is not None
        interval = cfg.batch_size / cfg.rate
        slots = [asyncio.Semaphore(cfg.concurrency) for _ in range(cfg.streams)]
        tasks: set[asyncio.Task[None]] = set()
        t0 = self.clock()
        self.measure_start = t0 + cfg.warmup_s
        warmup_rows = cfg.warmup_s * cfg.rate
        end_rows = (cfg.warmup_s + cfg.duration_s) * cfg.rate if cfg.duration_s else math.inf
        measured_batches = 0
        k = 0
        while True:
            g = k * cfg.clients + self.client
            intended = t0 + g * interval
            measured = g * cfg.batch_size >= warmup_rows
            if self.cancel.is_set() or not (
                g * cfg.batch_size < end_rows
                if cfg.duration_s is not None
                else measured_batches < self.factory.measured_batches
            ):
                break
            if measured:
                measured_batches += 1
            batch = await self.factory.build(k, last=self._is_last(measured, measured_batches))
            stream = k % cfg.streams
            k += 1
            # Short naps rather than waiting on the cancel event: a wait_for per batch costs a
            # task, and a nap of at most 0.25 s keeps cancel responsive.
            while (delay := intended - self.clock()) > 0 and not self.cancel.is_set():
                await self.sleep(min(delay, 0.25))
            if self.cancel.is_set():
                break
            slot = slots[stream]
            await slot.acquire()  # late only when `concurrency` batches are in flight
            task = asyncio.create_task(
                self._send(batch, intended=intended, measured=measured, stream=stream)
            )
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(_releaser(slot))
        if tasks:
            await asyncio.gather(*tasks)
        # The schedule covers the run's measured batches, this client's every clients-th:
        # the rate is over that window (or longer, when the writer finished late).
        self.last_completion = max(
            self.last_completion, self.measure_start + measured_batches * cfg.clients * interval
        )

    async def _send(
        self, batch: Any, *, intended: float | None, measured: bool, stream: int = 0
    ) -> None:
        writer = self.writers[stream]
        if measured and self.cpu_measured_from is None:
            self.cpu_measured_from = self.cpu_clock()
        self.in_flight += 1
        self.rows_sent += batch.count
        start = self.clock()
        try:
            await writer.write(batch.rows)
        except Exception as exc:  # every failure is counted, none stops the run
            self.in_flight -= 1
            message = exc.message if isinstance(exc, DirectWriteError) else repr(exc)
            self._failure(_kind(exc), message, batch.count, measured, intended)
            if measured:
                self.per_stream[stream].failed += 1
            return
        end = self.clock()
        self.in_flight -= 1
        if not measured:
            self.warmup_rows += batch.count
            return
        if self.phase == "warmup":
            self.phase = "measuring"
        self.rows += batch.count
        self.bytes += batch.bytes
        self.batches += 1
        self.per_stream[stream].add(batch.count, batch.bytes)
        self.last_completion = max(self.last_completion, end)
        self.service.record(end - start)
        if intended is not None:
            self.from_intended.record(end - intended)
            self.send_delay.record(max(0.0, start - intended))
        self._keep_ack(end - self.measure_start, batch.count, batch.bytes, (end - start) * 1000)
        second = self._second(end)
        second.rows += batch.count
        second.bytes += batch.bytes
        second.batches += 1
        second.latencies_ms.append((end - start) * 1000)
        self.wall.ack(self._epoch(end), batch.count, batch.bytes, end - start)
        if self.config.visibility and writer.stores_rows:
            self._maybe_sample_visibility(batch.batch_id, batch.count, end)

    def _keep_ack(self, offset: float, rows: int, size: int, latency_ms: float) -> None:
        if self.acks is None:
            return
        if offset >= SHORT_WINDOW_S or len(self.acks) >= SHORT_SERIES_MAX:
            self.acks = None  # not a short window (or too many to keep): whole seconds
            return
        self.acks.append((offset, rows, size, latency_ms))

    def _wall(self, at: float) -> float:
        """The UTC epoch time of clock instant `at`."""
        assert self.wall_started is not None
        return self.wall_started + (at - self.started)

    def _epoch(self, at: float) -> int:
        return math.floor(self._wall(at))

    def _second(self, at: float) -> _Second:
        index = max(0, int(at - self.measure_start))
        second = self.seconds.get(index)
        if second is None:
            second = self.seconds[index] = _Second()
        return second

    def _failure(
        self, kind: str, message: str, rows: int, measured: bool, intended: float | None
    ) -> None:
        if not measured:
            self.warmup_failed += 1
            if not self.error_samples:  # why, should no measured batch ever say so
                self.error_samples.append(f"{kind}: {message}"[:500])
            return
        self.failed += 1
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.acks is not None:
            self.failed_at.append(self.clock() - self.measure_start)
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{kind}: {message}"[:500])
        now = self.clock()
        self._second(now).errors += 1
        self.wall.error(self._epoch(now))

    # -- visibility ------------------------------------------------------------------

    def _maybe_sample_visibility(self, batch_id: str, rows: int, acked_at: float) -> None:
        # One sample at a time, and a new one at most every visibility_sample_ms: the
        # reader's queries must stay a small, steady load next to the writes they measure.
        if self._sampler is not None and not self._sampler.done():
            return
        if acked_at - self._last_sample_at < self.config.visibility_sample_ms / 1000:
            return
        self._last_sample_at = acked_at
        self._sampler = asyncio.create_task(self._sample(batch_id, rows, acked_at))

    async def _sample(self, batch_id: str, rows: int, acked_at: float) -> None:
        assert self.writer is not None
        poll = self.config.visibility_poll_ms / 1000
        while True:
            try:
                seen = await self.writer.count_rows(self.table, batch_id)
            except NotImplementedError:
                return
            except Exception as exc:
                self.visibility_timeouts += 1
                log.warning("visibility_check_failed", writer=self.name, error=str(exc))
                return
            now = self.clock()
            if seen >= rows:
                self.visibility.record(now - acked_at)
                return
            if now - acked_at > VISIBILITY_TIMEOUT_S:
                self.visibility_timeouts += 1
                return
            if self.cancel.is_set():
                return  # a cancelled run ends now, not after a 30 s visibility timeout
            await asyncio.sleep(poll)

    # -- reporting -------------------------------------------------------------------

    def elapsed(self) -> float:
        if self.measure_start == math.inf:
            return 0.0
        end = self.last_completion if self.phase == "done" else self.clock()
        return max(0.0, end - self.measure_start)

    def progress(self) -> dict[str, Any]:
        elapsed = self.elapsed()
        last_second: float = 0
        if self.measure_start != math.inf:  # a writer that has not started has no seconds yet
            if elapsed < 1:
                # No whole second yet (or a writer done within one): the rate so far over the
                # real window, not a partial second's rows read as rows per second.
                last_second = round(self.rows / elapsed) if elapsed > 0 else 0
            else:
                now_second = self.seconds.get(int(self.clock() - self.measure_start) - 1)
                last_second = now_second.rows if now_second else 0
        p = self.service
        return {
            "writer": self.name,
            "status": self.status,
            "phase": self.phase,
            "rows": self.rows,
            "failed_batches": self.failed,
            "elapsed_s": round(elapsed, 3),
            # Over the measured window, as the result's summary has it.
            "rows_per_s": round(self.rows / elapsed, 1) if elapsed > 0 else 0.0,
            "rows_per_s_last_second": last_second,
            "p50_ms": p.percentile_ms(50) if p.count else None,
            "p99_ms": p.percentile_ms(99) if p.count else None,
            "target_rows": self.factory.measured_rows,
            "target_rows_per_s": self.config.rate,
        }

    def series(self, elapsed: float, *, fine: bool = True) -> tuple[list[SecondStats], float]:
        """The throughput series and its bucket width: whole seconds, or (`fine`, a window
        under SHORT_WINDOW_S with every ack kept) sub-second buckets."""
        if not (fine and self.acks is not None and 0 < elapsed < SHORT_WINDOW_S):
            # Every second of the window, those without an ack at 0 rows: the series then
            # averages to the summary's rate (a writer with batches over 1 s acks in some).
            seconds = _within(self.seconds, elapsed, 1.0)
            stats = [
                self._second_stats(t, seconds.get(t) or _Second(), elapsed)
                for t in range(max(seconds, default=-1) + 1)
            ]
            return stats, 1.0
        width = bucket_width(elapsed)
        buckets: dict[int, _Second] = {}
        last = max(0, math.ceil(round(elapsed / width, 6)) - 1)
        for offset, rows, size, latency_ms in self.acks:
            b = buckets.setdefault(min(max(int(offset / width), 0), last), _Second())
            b.rows += rows
            b.bytes += size
            b.batches += 1
            b.latencies_ms.append(latency_ms)
        for offset in self.failed_at:
            buckets.setdefault(min(max(int(offset / width), 0), last), _Second()).errors += 1
        stats = [
            self._second_stats(i, buckets.get(i) or _Second(), elapsed, width)
            for i in range(max(buckets, default=-1) + 1)
        ]
        return stats, width

    def result(self, label: str, stores_rows: bool, *, fine: bool = True) -> WriterResult:
        elapsed = self.elapsed()
        per_second, bucket = self.series(elapsed, fine=fine)
        rows_per_s = self.rows / elapsed if elapsed > 0 else 0.0
        warnings: list[str] = list(self.notes)
        rate_ratio = None
        if self.config.rate is not None and self.rows:
            # One client of several is held to its share of the writer's target.
            share = self.config.rate / self.config.clients
            rate_ratio = round(rows_per_s / share, 4)
            if rate_ratio < 0.95:
                of = ""
                if self.config.clients > 1:
                    of = f" (this client's share of {self.config.rate:,})"
                warnings.append(
                    f"target rate not sustained: {rows_per_s:,.0f} of "
                    f"{share:,.0f} rows/s{of} ({rate_ratio:.0%})"
                )
        if self.failed:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.errors.items()))
            warnings.append(f"{self.failed} batches failed ({kinds})")
        if self.cpu_percent is not None and self.cpu_percent >= 90:
            warnings.append(
                f"client CPU saturated ({self.cpu_percent:.0f}% of a core): the load "
                "generator may be what limits these numbers"
            )
        if self.visibility_timeouts:
            warnings.append(f"{self.visibility_timeouts} visibility samples timed out or failed")
        if self.wire_problem:
            warnings.append(self.wire_problem)
        if stores_rows and self.status in ("completed", "cancelled") and self.batches:
            warnings += sample_warnings(self.batches, elapsed)
        histograms = {"latency": self.service.encode()}
        if self.from_intended.count:
            histograms["latency_from_intended"] = self.from_intended.encode()
            histograms["send_delay"] = self.send_delay.encode()
        if self.visibility.count:
            histograms["visibility"] = self.visibility.encode()
        curve_source = self.from_intended if self.from_intended.count else self.service
        wall_start = (
            self._wall(self.measure_start)
            if self.wall_started is not None and self.measure_start != math.inf
            else None
        )
        return WriterResult(
            writer=self.name,
            label=label,
            stores_rows=stores_rows,
            status=self.status,  # type: ignore[arg-type]
            error=self.error,
            rows=self.rows,
            bytes=self.bytes,
            batches=self.batches,
            failed_batches=self.failed,
            errors=dict(self.errors),
            error_samples=list(self.error_samples),
            warmup_rows=self.warmup_rows,
            elapsed_s=round(elapsed, 4),
            rows_per_s=round(rows_per_s, 1),
            mib_per_s=round(self.bytes / 1048576 / elapsed, 3) if elapsed > 0 else 0.0,
            target_rows_per_s=self.config.rate,
            rate_ratio=rate_ratio,
            latency_ms=_summary(self.service),
            latency_from_intended_ms=_summary(self.from_intended),
            send_delay_ms=_summary(self.send_delay),
            visibility=self._visibility_summary(stores_rows),
            per_second=per_second,
            bucket_s=bucket,
            percentile_curve=curve_source.curve(),
            histograms=histograms if self.service.count else {},
            client_cpu_percent=self.cpu_percent,
            client_cpu_s_per_million_rows=self.cpu_per_million_rows(),
            **_wire_fields([self], rows_per_s, self.config.batch_size),
            warnings=warnings,
            streams=self.config.streams,
            clients=self.config.clients,
            per_stream=[
                count.stats(self.client, i, elapsed) for i, count in enumerate(self.per_stream)
            ]
            if self.measure_start != math.inf
            else [],
            wire_count=self.wire_count(),
            wall_start_s=round(wall_start, 6) if wall_start is not None else None,
            wall_seconds=self.wall.series(wall_start, elapsed) if wall_start is not None else None,
        )

    def cpu_per_million_rows(self) -> float | None:
        """CPU seconds this process spent per million rows acknowledged in the measured
        window; None when writers ran in parallel (one process's CPU cannot be split)."""
        if self.config.parallel or self.cpu_measured_s is None or not self.rows:
            return None
        return round(self.cpu_measured_s / self.rows * 1e6, 4)

    def measured(self) -> bool:
        """Whether this part has figures to summarise (it ran and some batch was acked)."""
        return self.status in ("completed", "cancelled") and self.batches > 0

    def sample(self) -> Sample:
        rows, size, spans = seconds_of(
            [(t, s.rows, s.bytes) for t, s in self.seconds.items()], self.elapsed()
        )
        return Sample(rows, size, spans, self.service, self.visibility)

    def repeat_stats(self) -> RepeatStats:
        elapsed = self.elapsed()
        lat = _summary(self.service)

        def pct(name: str) -> float | None:
            return getattr(lat, name) if lat is not None and lat.supports(name) else None

        vis = self.visibility
        return RepeatStats(
            repeat=self.repeat,
            status=self.status,  # type: ignore[arg-type]
            rows=self.rows,
            batches=self.batches,
            failed_batches=self.failed,
            elapsed_s=round(elapsed, 4),
            rows_per_s=round(self.rows / elapsed, 1) if elapsed > 0 else 0.0,
            mib_per_s=round(self.bytes / 1048576 / elapsed, 3) if elapsed > 0 else 0.0,
            p50_ms=pct("p50"),
            p95_ms=pct("p95"),
            p99_ms=pct("p99"),
            visibility_p95_ms=vis.percentile_ms(95) if vis.count >= min_batches(95) else None,
        )

    def _visibility_summary(self, stores_rows: bool) -> VisibilitySummary | None:
        if not (self.config.visibility and stores_rows):
            return None
        v = self.visibility
        return VisibilitySummary(
            samples=v.count,
            timeouts=self.visibility_timeouts,
            poll_interval_ms=self.config.visibility_poll_ms,
            sample_interval_ms=self.config.visibility_sample_ms,
            p50_ms=v.percentile_ms(50) if v.count else None,
            p95_ms=v.percentile_ms(95) if v.count else None,
            max_ms=v.hist.get_max_value() / 1000 if v.count else None,
        )

    @staticmethod
    def _second_stats(index: int, s: _Second, elapsed: float, width: float = 1.0) -> SecondStats:
        # The last bucket is cut short by the end of the window: its rate is over what it
        # covered, so the series averages to rows / elapsed, the summary's rate.
        at = index * width
        span = min(width, max(elapsed - at, 0.0)) or width
        return SecondStats(
            t=int(at + 1e-9),
            at_s=round(at, 6),
            span_s=round(span, 6),
            rows_per_s=round(s.rows / span, 1),
            rows=s.rows,
            mib=round(s.bytes / 1048576, 4),
            batches=s.batches,
            errors=s.errors,
            p50_ms=round(exact_percentile(s.latencies_ms, 50), 3) if s.latencies_ms else None,
            p99_ms=round(exact_percentile(s.latencies_ms, 99), 3) if s.latencies_ms else None,
        )


def sample_warnings(batches: int, elapsed: float, *, per: str = "") -> list[str]:
    """Too few batches for p95, or a window under 10 s; `per` names what they count in
    ("per repeat, fewest: ")."""
    out = []
    if batches < FEW_BATCHES:
        missing = ", ".join(unsupported_percentiles(batches))
        out.append(
            f"too few batches: {per}{batches:,} measured, so {missing} cannot be read from "
            f"this sample (pXX needs 10/(1-p) batches: p95 {FEW_BATCHES:,}, p99 "
            f"{min_batches(99.0):,}, p99.9 {min_batches(99.9):,}); run longer"
        )
    if elapsed < SHORT_WINDOW_S:
        out.append(
            f"measured window too short: {per}{elapsed:.2f} s (under {SHORT_WINDOW_S:g} s), "
            "too short to judge steady throughput; run longer (default 30 s)"
        )
    return out


def _summary(latencies: Latencies) -> LatencySummary | None:
    values = latencies.summary()
    if not values:
        return None
    return LatencySummary.model_validate(
        {**values, "unsupported": unsupported_percentiles(latencies.count)}
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


class BenchmarkRun:
    """A run in progress: start it, watch its progress, cancel it, take its result."""

    def __init__(
        self,
        config: BenchmarkConfig,
        *,
        run_id: str | None = None,
        environment: dict[str, Any] | None = None,
        clock: Clock = time.perf_counter,
        workloads: WorkloadRegistry | None = None,
        host_probe: Callable[[], dict[str, Any]] = host_sample,
        cpu_clock: Clock = time.process_time,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        client: int = 0,
        gate: Gate | None = None,
        tick: Sleep = asyncio.sleep,
    ) -> None:
        """`client`: which of the config's clients this run is (the others run elsewhere:
        bench.clients); it writes its share of the batches and of the rate. `gate`: awaited
        by each writer's part when ready to start (the clients' start barrier). `tick`: how
        the progress reporter waits its second (tests inject one on their clock)."""
        self.tick = tick
        self.config = config
        self.client = client
        self.host_probe = host_probe
        self.host_load: dict[str, Any] | None = None
        self.workload = (workloads or WorkloadRegistry()).get(config.workload)
        self.id = run_id or new_run_id()
        self.environment = environment or {}
        self.clock = clock
        self.cancel_event = asyncio.Event()
        self.started_at = _now()
        self.finished_at: str | None = None
        self.status = "running"
        self.error: str | None = None
        # Round r runs every writer once, starting with writer r mod n: with repeats, each
        # writer runs early and late alike, so a drift of the host (a filling disk, a
        # neighbour's load) spreads over all writers instead of biasing the last one.
        self.rounds = [
            [
                _WriterRun(
                    name,
                    config,
                    self.workload,
                    self._batch_prefix(r),
                    clock,
                    self.cancel_event,
                    r,
                    cpu_clock,
                    wall_clock,
                    sleep,
                    client,
                    gate,
                )
                for name in _rotated(config.writers, r)
            ]
            for r in range(config.repeat)
        ]
        self.parts = [part for round_ in self.rounds for part in round_]
        self._labels: dict[str, tuple[str, bool]] = {}

    def _batch_prefix(self, repeat: int) -> str:
        # Batch and row ids stay unique across repeats (visibility counts rows per batch id).
        return self.id if self.config.repeat == 1 else f"{self.id}-r{repeat}"

    def cancel(self) -> None:
        self.cancel_event.set()

    async def execute(
        self, source: WriterSource, on_progress: ProgressCallback | None = None
    ) -> RunResult:
        ticker = asyncio.create_task(self._tick(on_progress)) if on_progress else None
        before = self.host_probe()
        try:
            for round_ in self.rounds:
                if self.config.parallel:
                    await asyncio.gather(*(self._one(part, source) for part in round_))
                else:
                    for part in round_:
                        await self._one(part, source)
            self.status = "cancelled" if self.cancel_event.is_set() else self._outcome()
        except Exception as exc:  # a harness bug: keep what was measured, say so
            log.exception("benchmark_failed", run_id=self.id)
            self.status, self.error = "failed", repr(exc)
        finally:
            if ticker is not None:
                ticker.cancel()
            self.host_load = host_load(before, self.host_probe())
            self.finished_at = _now()
        result = self.result()
        if on_progress:
            on_progress(self.progress())
        return result

    def _outcome(self) -> str:
        """completed when every writer ran; partial when some did not (unavailable, or every
        batch failed); failed when none did."""
        ran = [
            any(part.status == "completed" for part in self._parts_of(name))
            for name in self.config.writers
        ]
        if all(ran):
            return "completed"
        return "partial" if any(ran) else "failed"

    async def _one(self, part: _WriterRun, source: WriterSource) -> None:
        if self.cancel_event.is_set():
            part.status = "cancelled"
            return
        await part.run(source)
        if part.writer is not None:
            self._labels[part.name] = (part.writer.label, part.writer.stores_rows)

    async def _tick(self, on_progress: ProgressCallback) -> None:
        while True:
            await self.tick(1.0)
            on_progress(self.progress())

    def _parts_of(self, name: str) -> list[_WriterRun]:
        """The writer's part in each round, in the order the rounds ran."""
        return [part for round_ in self.rounds for part in round_ if part.name == name]

    def _current_round(self) -> int:
        started = [
            r for r, round_ in enumerate(self.rounds) if any(p.status != "pending" for p in round_)
        ]
        return started[-1] if started else 0

    def progress(self) -> dict[str, Any]:
        current = self._current_round()
        by_name = {part.name: part for part in self.rounds[current]}
        writers = []
        for name in self.config.writers:
            entry = by_name[name].progress()
            entry["repeat"] = current
            writers.append(entry)
        return {
            "run_id": self.id,
            "status": self.status,
            "repeat": current,
            "repeats": self.config.repeat,
            "writers": writers,
        }

    def result(self) -> RunResult:
        writers = []
        for name in self.config.writers:
            label, stores = self._labels.get(name) or registry_label(name)
            parts = self._parts_of(name)
            if len(parts) == 1:
                one = parts[0].result(label, stores)
                if parts[0].measured() and parts[0].phase == "done":
                    one.intervals = intervals([parts[0].sample()])
                writers.append(one)
            else:
                writers.append(_merged(parts, label, stores))
        warnings = [f"{w.label}: {text}" for w in writers for text in w.warnings]
        if self.error:
            warnings.insert(0, f"the run stopped on an error: {self.error}")
        elif self.status in ("partial", "failed"):
            missing = [w for w in writers if w.status in ("unavailable", "failed")]
            what = "no writer ran" if self.status == "failed" else "not every writer ran"
            names = "; ".join(f"{w.label} {w.status}: {w.error}" for w in missing)
            warnings.insert(0, f"{what} ({names})")
        if self.host_load is not None:
            warnings += host_load_warnings(self.host_load)
        return RunResult(
            id=self.id,
            status=self.status,  # type: ignore[arg-type]
            partial=self.status in ("cancelled", "failed", "partial", "running"),
            started_at=self.started_at,
            finished_at=self.finished_at,
            config=self.config,
            workload=_workload_summary(self.workload),
            environment={**self.environment, "host_load": self.host_load}
            if self.host_load is not None
            else self.environment,
            writers=writers,
            warnings=warnings,
        )


def _releaser(slot: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
    def release(_: asyncio.Task[None]) -> None:
        slot.release()

    return release


def _rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def _merged(parts: list[_WriterRun], label: str, stores_rows: bool) -> WriterResult:
    """One writer over all its repeats: totals over the repeats' measured windows, latency
    from the merged histograms, the repeats' own figures, and each metric's median over the
    repeats with its interval (bench.intervals)."""
    # Whole seconds: the repeats' series are laid end to end.
    each = [part.result(label, stores_rows, fine=False) for part in parts]
    statuses = [w.status for w in each]
    if "cancelled" in statuses:
        status = "cancelled"
    elif "completed" in statuses:
        status = "completed"
    else:
        status = statuses[0]  # every repeat unavailable or failed alike
    first = parts[0]
    service = Latencies.merged(p.service for p in parts)
    from_intended = Latencies.merged(p.from_intended for p in parts)
    send_delay = Latencies.merged(p.send_delay for p in parts)
    visibility = Latencies.merged(p.visibility for p in parts)
    rows = sum(w.rows for w in each)
    size = sum(w.bytes for w in each)
    elapsed = sum(w.elapsed_s for w in each)
    rows_per_s = rows / elapsed if elapsed > 0 else 0.0
    errors: dict[str, int] = {}
    for w in each:
        for kind, n in w.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    per_second = []
    offset = 0
    for r, w in enumerate(each):
        for second in w.per_second:
            t = offset + second.t
            per_second.append(second.model_copy(update={"t": t, "at_s": float(t), "repeat": r}))
        last = w.per_second[-1].t + 1 if w.per_second else 0
        offset += max(math.ceil(w.elapsed_s), last)
    rate = first.config.rate
    histograms = {"latency": service.encode()} if service.count else {}
    if from_intended.count:
        histograms["latency_from_intended"] = from_intended.encode()
        histograms["send_delay"] = send_delay.encode()
    if visibility.count:
        histograms["visibility"] = visibility.encode()
    vis = [w.visibility for w in each if w.visibility is not None]
    cpu = [w.client_cpu_percent for w in each if w.client_cpu_percent is not None]
    # Each repeat's own warnings, except the sample-size ones: those are said once, for the
    # smallest repeat (each repeat's percentiles and window must stand on their own).
    own = [
        f"repeat {r + 1}: {text}"
        for r, w in enumerate(each)
        for text in w.warnings
        if not text.startswith(("too few batches:", "measured window too short:"))
    ]
    measured = [part.sample() for part in parts if part.measured()]
    warnings = own
    if stores_rows and measured:
        ran = [p for p in parts if p.measured()]
        warnings += sample_warnings(
            min(p.batches for p in ran),
            min(p.elapsed() for p in ran),
            per="per repeat, fewest ",
        )
    if 0 < len(measured) < len(parts):
        warnings.append(
            f"{len(parts) - len(measured)} of {len(parts)} repeats measured nothing; the "
            f"medians are over the {len(measured)} that did"
        )
    return WriterResult(
        writer=first.name,
        label=label,
        stores_rows=stores_rows,
        status=status,  # type: ignore[arg-type]
        error=next((w.error for w in each if w.error), None),
        rows=rows,
        bytes=size,
        batches=sum(w.batches for w in each),
        failed_batches=sum(w.failed_batches for w in each),
        errors=errors,
        error_samples=[e for w in each for e in w.error_samples][:MAX_ERROR_SAMPLES],
        warmup_rows=sum(w.warmup_rows for w in each),
        elapsed_s=round(elapsed, 4),
        rows_per_s=round(rows_per_s, 1),
        mib_per_s=round(size / 1048576 / elapsed, 3) if elapsed > 0 else 0.0,
        target_rows_per_s=rate,
        rate_ratio=round(rows_per_s / rate, 4) if rate is not None and rows else None,
        latency_ms=_summary(service),
        latency_from_intended_ms=_summary(from_intended),
        send_delay_ms=_summary(send_delay),
        visibility=VisibilitySummary(
            samples=visibility.count,
            timeouts=sum(v.timeouts for v in vis),
            poll_interval_ms=vis[0].poll_interval_ms,
            sample_interval_ms=vis[0].sample_interval_ms,
            p50_ms=visibility.percentile_ms(50) if visibility.count else None,
            p95_ms=visibility.percentile_ms(95) if visibility.count else None,
            max_ms=visibility.hist.get_max_value() / 1000 if visibility.count else None,
        )
        if vis
        else None,
        per_second=per_second,
        percentile_curve=(from_intended if from_intended.count else service).curve(),
        histograms=histograms,
        client_cpu_percent=round(sum(cpu) / len(cpu), 1) if cpu else None,
        client_cpu_s_per_million_rows=_cpu_per_million(parts),
        **_wire_fields(parts, rows_per_s, parts[0].config.batch_size),
        repeats=[part.repeat_stats() for part in parts],
        intervals=intervals(measured) if measured else {},
        warnings=warnings,
    )


def _wire_fields(parts: list[_WriterRun], rows_per_s: float, batch_rows: int) -> dict[str, Any]:
    """Wire bytes per row over the parts that measured them, and the quota projection."""
    measured = [m for m in (p.wire_bytes() for p in parts) if m is not None]
    if not measured:
        return {}
    sent = sum(m[1] for m in measured)
    per_row = sum(m[0] for m in measured) / sent
    writer = parts[0].writer
    interface = writer.wire_interface if writer is not None else None
    # The quotas are per stream: what one of this client's streams carried, on average.
    per_stream = rows_per_s / parts[0].config.streams
    return {
        "wire_bytes_per_row": round(per_row, 1),
        "wire_bytes_source": measured[-1][2],
        "quota_projection": project(interface, per_row, batch_rows, per_stream),
    }


def _cpu_per_million(parts: list[_WriterRun]) -> float | None:
    spent = [p.cpu_measured_s for p in parts if p.cpu_measured_s is not None and p.rows]
    rows = sum(p.rows for p in parts if p.cpu_measured_s is not None and p.rows)
    if not spent or rows == 0 or parts[0].config.parallel:
        return None
    return round(sum(spent) / rows * 1e6, 4)


def registry_label(name: str) -> tuple[str, bool]:
    """The label of a writer that never opened (unavailable): from the registry."""
    from writers import WRITERS, writer_metadata

    if name not in WRITERS:
        return name, True
    meta = writer_metadata(name)
    return str(meta["label"]), bool(meta["stores_rows"])


def _workload_summary(workload: Workload) -> dict[str, Any]:
    table = workload.table
    return {
        "name": workload.name,
        "label": workload.label,
        "columns": workload.schema.describe(),
        "delta_table": table.delta_table,
        "postgres_table": table.postgres_table,
    }


def new_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


async def run_benchmark(
    config: BenchmarkConfig,
    source: WriterSource,
    *,
    on_progress: ProgressCallback | None = None,
    environment: dict[str, Any] | None = None,
    clock: Clock = time.perf_counter,
    workloads: WorkloadRegistry | None = None,
    host_probe: Callable[[], dict[str, Any]] = host_sample,
    wall_clock: Clock = time.time,
    sleep: Sleep = asyncio.sleep,
) -> RunResult:
    """Run the workload through each writer and return the measured result. `clock` times
    everything; `wall_clock` (read once per writer) places it in UTC epoch seconds; `sleep`
    is how the open loop waits for a batch's due time (all three injected by tests)."""
    run = BenchmarkRun(
        config,
        environment=environment,
        clock=clock,
        workloads=workloads,
        host_probe=host_probe,
        wall_clock=wall_clock,
        sleep=sleep,
    )
    return await run.execute(source, on_progress)
