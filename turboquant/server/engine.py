"""Request scheduling for the HTTP server: a bounded queue in front of a pool of workers.

Scheme. The weights are loaded once (one ``turboquant.Model``). Each admitted request gets
a session of its own (``Model.create_session``: a KV cache and activation buffers) and runs
on one of ``max_concurrent`` worker threads. The forward pass releases the GIL, so the
workers run in parallel in the C engine. Before every forward step a session takes
``threads // running`` OpenMP threads (at least one), so one request alone uses every core
and N busy requests share the cores instead of starting N x threads OpenMP threads. Requests
beyond ``max_concurrent`` wait in a queue of ``max_queue`` places, and requests beyond that
are rejected (HTTP 503). A request's session is freed as soon as it finishes, fails or is
cancelled, for example because its client disconnected.

Nothing is batched across requests: every running request reads the weights for its own
step, so the total rate of N requests is at most what the memory bandwidth allows for N
separate single-sequence decodes.

NOTE: sampling (``turboquant._core.Sampler``) runs with the GIL held, so the sampling steps
of concurrent requests take turns. Greedy sampling over Gemma's 262,144 logits took about
1.5 ms per token on the 2-core test machine, small next to a forward step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Optional

from ..model import GenerationStats, Model

log = logging.getLogger("turboquant.server")


class QueueFullError(Exception):
    """Raised by ``Engine.submit`` when every worker is busy and the queue is full."""


class RequestCancelled(Exception):
    """Raised inside a worker to stop a generation whose client went away."""


@dataclasses.dataclass(eq=False)
class GenerationJob:
    """One request's generation: its inputs, and the channel its pieces go through.

    ``events`` receives ("piece", text) for each piece of output, then exactly one of
    ("done", GenerationStats) or ("error", exception). The worker puts them from its
    thread with ``loop.call_soon_threadsafe``.
    """

    request_id: str
    prompt_ids: list
    sampling: dict
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    submitted_at: float = dataclasses.field(default_factory=time.perf_counter)
    started_at: Optional[float] = None
    first_piece_at: Optional[float] = None

    def post(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:
            # The event loop has closed (server shutdown), so no handler reads the events any more.
            self.cancelled.set()


class _RequestSession(Model):
    """A session that stops when its job is cancelled and re-balances threads before each step."""

    def __init__(self, core_context, path: str, engine: "Engine", job: GenerationJob):
        super().__init__(core_context, path)
        self._engine = engine
        self._job = job

    def _before_step(self) -> None:
        if self._job.cancelled.is_set():
            raise RequestCancelled(self._job.request_id)
        threads = self._engine.threads_per_request()
        if self._core.threads != threads:
            self._core.threads = threads

    def _prefill(self, prompt, hidden=False, soft=None):
        self._before_step()
        return super()._prefill(prompt, hidden=hidden, soft=soft)

    def _eval_one(self, token):
        self._before_step()
        return super()._eval_one(token)

    def _eval_tree(self, tokens, parents):
        self._before_step()
        return super()._eval_tree(tokens, parents)


class Engine:
    """Admission control and worker pool around one loaded Model."""

    def __init__(self, model: Model, max_concurrent: int, max_queue: int, threads: int, mtp_heads=None,
                 draft_tree=None):
        if max_concurrent < 1 or max_queue < 0 or threads < 1:
            raise ValueError(
                f"max_concurrent ({max_concurrent}) and threads ({threads}) must be >= 1, "
                f"max_queue ({max_queue}) >= 0"
            )
        self.model = model
        self.mtp_heads = mtp_heads  # drafting heads: every request decodes speculatively
        self.draft_tree = draft_tree  # None: turboquant.speculative.DEFAULT_TREE
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.threads = threads
        self._lock = threading.Lock()
        self._admitted = 0  # running plus waiting
        self._running = 0
        self._jobs: set = set()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_concurrent,
                                                               thread_name_prefix="turboquant-worker")

    # ---------------------------------------------------------------- counters

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._admitted - self._running

    def threads_per_request(self) -> int:
        """Return the OpenMP threads of one forward step: the threads shared by the running requests."""
        return max(1, self.threads // max(1, self._running))

    # -------------------------------------------------------------- admission

    def submit(self, job: GenerationJob) -> concurrent.futures.Future:
        """Queue job on the worker pool; raise QueueFullError when it has no free place."""
        with self._lock:
            if self._admitted >= self.max_concurrent + self.max_queue:
                raise QueueFullError(
                    f"the server is busy: {self.max_concurrent} requests are running and the queue of "
                    f"{self.max_queue} is full; retry later"
                )
            self._admitted += 1
            self._jobs.add(job)
        try:
            return self._executor.submit(self._run, job)
        except RuntimeError:
            # The executor has shut down: the server is stopping.
            self._release(job, started=False)
            raise QueueFullError("the server is shutting down") from None

    def _release(self, job: GenerationJob, started: bool) -> None:
        with self._lock:
            self._admitted -= 1
            if started:
                self._running -= 1
            self._jobs.discard(job)

    # ----------------------------------------------------------------- workers

    def _run(self, job: GenerationJob) -> None:
        with self._lock:
            self._running += 1
        job.started_at = time.perf_counter()
        session = None
        try:
            if job.cancelled.is_set():
                raise RequestCancelled(job.request_id)
            context = self.model._core.create_context(threads=self.threads_per_request())
            session = _RequestSession(context, self.model.path, self, job)
            sampling = dict(job.sampling)
            if self.mtp_heads is not None:
                sampling.update(speculative=True, mtp_checkpoint=self.mtp_heads, draft_tree=self.draft_tree)
            pieces = session.generate(job.prompt_ids, stream=True, **sampling)
            try:
                for piece in pieces:
                    if job.first_piece_at is None:
                        job.first_piece_at = time.perf_counter()
                    job.post("piece", piece)
            finally:
                pieces.close()
            job.post("done", session.last_stats)
        except RequestCancelled:
            stats = session.last_stats if session is not None else None
            generated = stats.completion_tokens if stats is not None else 0
            log.info("request %s cancelled after %d tokens; its KV cache is freed", job.request_id, generated)
            job.post("error", RequestCancelled(job.request_id))
        except Exception as exc:  # reported to the client as a 500 and logged with the request id
            log.exception("request %s failed in the worker: %s", job.request_id, exc)
            # Without its traceback, the exception does not keep this frame and its session alive.
            job.post("error", exc.with_traceback(None))
        finally:
            # The session's KV cache and buffers are freed on return, with this frame's references.
            self._release(job, started=True)

    # ---------------------------------------------------------------- shutdown

    def shutdown(self) -> None:
        """Cancel every admitted request and wait for the workers to stop."""
        with self._lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancelled.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        # Jobs whose futures were cancelled before they started never reach _run.
        with self._lock:
            never_started = list(self._jobs)
            self._jobs.clear()
            self._admitted = 0
        for job in never_started:
            job.post("error", RequestCancelled(job.request_id))


def elapsed(start: Optional[float], end: Optional[float]) -> Optional[float]:
    """Return end - start in seconds, or None when either is unknown."""
    if start is None or end is None:
        return None
    return end - start


__all__ = ["Engine", "GenerationJob", "GenerationStats", "QueueFullError", "RequestCancelled", "elapsed"]
