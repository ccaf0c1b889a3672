"""The two drivers: an httpx transport (sync) and an async transport that wrap the
real one and only perform what `_flow.operation_flow` decides.

Plug samekey under an httpx client you already have::

    client = httpx.Client(transport=samekey.SameKeyTransport(journal="pay.sqlite3"))
    client.post(url, json=..., extensions={"samekey.operation": "order-42/charge"})
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.to_thread
import httpx

from . import _scope as scope
from ._actions import Action, Discard, Flow, Read, Send, Sleep, abandon
from ._config import Config, Options
from ._contract import BatchingStore, Complete, JournalCall, JournalStore
from ._engine import Engine, open_engine
from ._flow import operation_flow
from ._identity import PROCESS, at_fork_in_child
from ._policy import RetryPolicy
from ._reserve import AsyncKeyFor, KeyFor

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncSameKeyTransport", "SameKeyTransport"]

logger = logging.getLogger("samekey")


def _buffered(response: httpx.Response, raw: bytes) -> httpx.Response:
    # The answer is read whole (the flow journals it and may retry), then handed on in the
    # same Response with its raw, still encoded body: the client decodes it, as for any
    # transport. Only the stream is closed (the connection goes back to the pool); the
    # response itself stays open for the client to read.
    response.stream = httpx.ByteStream(raw)
    return response


class EngineHolder:
    """What the two transports and the two clients share: the engine and who closes its journal."""

    engine: Engine
    _owns_journal: bool

    @property
    def journal(self) -> JournalStore:
        return self.engine.journal

    @property
    def policy(self) -> RetryPolicy:
        return self.engine.policy

    def _close_journal(self) -> None:
        if self._owns_journal:
            self.engine.journal.close()


# Every transport, so that a forked child can let go of the connections it inherited.
_InnerT = TypeVar("_InnerT", httpx.BaseTransport, httpx.AsyncBaseTransport)
_TRANSPORTS: weakref.WeakSet[_Wrapping[Any]] = weakref.WeakSet()


def _drop_inherited_connections() -> None:
    """In a forked child: forget the parent's pooled keep-alive connections (httpx's own pools).

    The child holds copies of the parent's sockets. Sending on one, two processes would read
    each other's answers: one payment's answer returned, and journaled, as another's. The
    child opens its own connections instead; its copies are closed when dropped, which does
    not close the parent's connection (the socket stays open while the parent holds it).
    """
    for transport in list(_TRANSPORTS):
        pool = getattr(transport.inner, "_pool", None)  # httpx.HTTPTransport / AsyncHTTPTransport
        if isinstance(getattr(pool, "_connections", None), list) and isinstance(
            getattr(pool, "_requests", None), list
        ):
            pool._connections = []  # type: ignore[union-attr]
            pool._requests = []  # type: ignore[union-attr]  # the parent's other threads' requests


at_fork_in_child(_drop_inherited_connections)


class _Wrapping(EngineHolder, Generic[_InnerT]):
    """What the two transports share: samekey's
    keywords (typed once), and the real transport inside."""

    inner: _InnerT

    def __init__(self, transport: _InnerT | None = None, **options: Unpack[Options]) -> None:
        self.engine, self._owns_journal = open_engine(Config.of(**options))
        self.inner = transport if transport is not None else self._default_inner()
        _TRANSPORTS.add(self)

    def _default_inner(self) -> _InnerT:
        raise NotImplementedError


class SameKeyTransport(httpx.BaseTransport, _Wrapping[httpx.BaseTransport], KeyFor):
    """An httpx transport that adds keys, journals and retries around ``transport``."""

    def _default_inner(self) -> httpx.BaseTransport:
        return httpx.HTTPTransport()

    @classmethod
    def around(cls, transport: httpx.BaseTransport, engine: Engine) -> SameKeyTransport:
        self = cls.__new__(cls)
        self.engine, self._owns_journal, self.inner = engine, False, transport
        _TRANSPORTS.add(self)
        return self

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # the body must be re-sendable on every attempt
        scope.apply(
            self.engine, request
        )  # inside `with samekey.operation(...)`: the block's operation
        flow = operation_flow(self.engine, request)
        try:
            action = next(flow)
            while True:
                try:
                    result = self._perform(action)
                except Exception as exc:
                    action = flow.throw(exc)
                except BaseException as exc:  # Ctrl-C: the lease is freed, the key kept
                    abandon(flow, exc, self._run_now)
                    raise
                else:
                    action = flow.send(result)
        except StopIteration as done:
            response: httpx.Response = done.value
            return response

    def _perform(self, action: Action) -> Any:
        if isinstance(action, Send):
            response = self.inner.handle_request(action.request)
            return self._read(response) if action.buffer else response
        if isinstance(action, Read):
            return self._read(action.response)
        if isinstance(action, Discard):
            action.response.stream.close()  # type: ignore[union-attr]
            return None
        if isinstance(action, Sleep):
            if action.seconds > 0:
                time.sleep(action.seconds)
            return None
        return self._run_now(action)

    def _run_now(self, call: JournalCall) -> Any:
        return call.run(self.engine.journal)

    @staticmethod
    def _read(response: httpx.Response) -> httpx.Response:
        stream = response.stream
        try:
            return _buffered(response, b"".join(stream))  # type: ignore[arg-type]
        finally:
            stream.close()  # type: ignore[union-attr]

    def close(self) -> None:
        self.inner.close()
        self._close_journal()


class AsyncSameKeyTransport(
    httpx.AsyncBaseTransport, _Wrapping[httpx.AsyncBaseTransport], AsyncKeyFor
):
    """The async twin of `SameKeyTransport`: same flow, awaited I/O."""

    _journal_thread: _JournalThread | None = None  # started on the first journal call

    def _default_inner(self) -> httpx.AsyncBaseTransport:
        return httpx.AsyncHTTPTransport()

    @classmethod
    def around(cls, transport: httpx.AsyncBaseTransport, engine: Engine) -> AsyncSameKeyTransport:
        self = cls.__new__(cls)
        self.engine, self._owns_journal, self.inner = engine, False, transport
        _TRANSPORTS.add(self)
        return self

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        scope.apply(
            self.engine, request
        )  # inside `with samekey.operation(...)`: the block's operation
        flow = operation_flow(self.engine, request)
        on_worker = _WorkerCalls()
        try:
            action = next(flow)
            while True:
                try:
                    result = await self._perform(action, on_worker)
                except Exception as exc:
                    action = flow.throw(exc)
                except BaseException as exc:  # a cancelled task: the lease is freed, the key kept
                    if isinstance(exc, GeneratorExit):
                        # the coroutine is being closed (its task dropped and collected mid-call):
                        # the flow hears of a cancellation, as a closing generator could not yield
                        # its release, and the release is queued but not awaited (a closing
                        # coroutine may not)
                        self._release(flow, asyncio.CancelledError(), on_worker)
                    else:
                        await _released(self._release(flow, exc, on_worker))
                    raise
                else:
                    action = flow.send(result)
        except StopIteration as done:
            response: httpx.Response = done.value
            return response

    async def _perform(self, action: Action, on_worker: _WorkerCalls) -> Any:
        if isinstance(action, Send):
            response = await self.inner.handle_async_request(action.request)
            return await self._read(response) if action.buffer else response
        if isinstance(action, Read):
            return await self._read(action.response)
        if isinstance(action, Discard):
            await action.response.stream.aclose()  # type: ignore[union-attr]
            return None
        if isinstance(action, Sleep):
            if action.seconds > 0:
                await anyio.sleep(action.seconds)
            return None
        if isinstance(action, Complete) and self.engine.completes_later:
            return action.run(self.engine.journal)  # queued, returns at once (see _deferred)
        journal = self.engine.batching
        if journal is not None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio (trio): a worker thread per call
                pass
            else:
                thread = self._journal_thread
                if thread is None:
                    thread = self._journal_thread = _JournalThread(journal)
                return await thread.submit(action, loop)
        return await on_worker.run(action, self.engine.journal)

    def _release(
        self, flow: Flow, interruption: BaseException, on_worker: _WorkerCalls
    ) -> list[threading.Event]:
        """Let the flow free its lease; returns the releases' ends, which the task may await.

        A claim cut short may still be queued on (or running in) the journal thread: the
        release goes behind it there, or it would find nothing to free and the claim would
        then hold the lease for its full length. Likewise behind a worker-thread call
        (PostgresJournal, another store): asyncio cancels the task's wait for it, not the thread.
        """
        running = on_worker.abandon()
        releases: list[threading.Event] = []

        def queue(call: JournalCall) -> None:
            done = threading.Event()
            thread = self._journal_thread
            if thread is not None:
                thread.post(call, done)
            # on a thread of its own, started now: a second cancellation ends the wait, not the
            # release
            else:
                args = (running, call, self.engine.journal, done)
                threading.Thread(
                    target=_release_after, args=args, name="samekey-release", daemon=True
                ).start()
            releases.append(done)

        abandon(flow, interruption, queue)
        return releases

    @staticmethod
    async def _read(response: httpx.Response) -> httpx.Response:
        stream = response.stream
        try:
            return _buffered(response, b"".join([chunk async for chunk in stream]))  # type: ignore[union-attr]
        finally:
            await stream.aclose()  # type: ignore[union-attr]

    async def aclose(self) -> None:
        await self.inner.aclose()
        thread, self._journal_thread = self._journal_thread, None
        if thread is not None:
            thread.stop()
        self._close_journal()


class _WorkerCalls:
    """One request's journal calls on worker threads (PostgresJournal, another store, or under
    trio).

    A cancelled asyncio task stops waiting for such a call, but the thread goes on: the release
    of an interrupted task must come after a claim still running there, and must not wait for
    one that never started (anyio drops a call whose wait was cancelled before it began).
    """

    __slots__ = ("_abandoned", "_lock", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # set once the call that started last has ended
        self._running: threading.Event | None = None
        self._abandoned = False

    async def run(self, call: JournalCall, journal: JournalStore) -> Any:
        ended = threading.Event()

        def run() -> Any:
            with self._lock:
                if self._abandoned:  # its task was interrupted before it began: nobody waits for it
                    return None
                self._running = ended
            try:
                return call.run(journal)
            finally:
                ended.set()

        return await anyio.to_thread.run_sync(run)

    def abandon(self) -> threading.Event | None:
        """The task was interrupted: a call not yet
        begun never runs. Returns the end of one running."""
        with self._lock:
            self._abandoned = True
            return self._running


def _release_after(
    running: threading.Event | None, call: JournalCall, journal: JournalStore, done: threading.Event
) -> None:
    """Run the release ``call`` once the worker-thread call ``running`` (if any) has ended."""
    try:
        if running is not None:
            running.wait(60)
        call.run(journal)
    except Exception:  # a broken journal: the lease then ends by itself when it expires
        logger.debug("samekey: freeing the lease of a cancelled call failed", exc_info=True)
    finally:
        done.set()


async def _released(releases: list[threading.Event]) -> None:
    """Wait for the releases shielded from the cancellation, so the interruption reaches the
    caller with the lease free; the event loop runs meanwhile (the journal may be busy for
    seconds)."""
    with anyio.move_on_after(60, shield=True):
        for done in releases:
            try:
                await anyio.to_thread.run_sync(done.wait, 60)
            except (
                BaseException
            ):  # cancelled again (asyncio cannot shield from that): the releases still run
                return


_Waiter = asyncio.Future[Any] | threading.Event


class _JournalThread:
    """One thread that runs the journal calls of every task of an async transport.

    Tasks queue their JournalCall and await a future; the thread takes everything queued
    and runs it with `BatchingStore.run_batch` (all writes in one group commit), then
    resolves the futures on their own event loops. Compared with a worker thread
    per call, this is one thread hop per batch instead of per call, and the batch
    pays one commit (one fsync in "fsync" mode) for all its operations. The thread
    exits after a short idle time and starts again on the next call.
    """

    IDLE_SECONDS = 2.0

    def __init__(self, journal: BatchingStore) -> None:
        self.journal = journal
        self._start()

    def _start(self) -> None:
        self._pid = PROCESS.pid
        self._lock = threading.Lock()
        # (call, loop, future); no loop: posted by an interrupted task, which waits on an Event
        self._items: list[tuple[JournalCall, asyncio.AbstractEventLoop | None, _Waiter]] = []
        self._wake = threading.Event()
        self._running = False
        self._stopping = False

    def submit(self, call: JournalCall, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = loop.create_future()
        self._queue(call, loop, future)
        return future

    def post(self, call: JournalCall, done: threading.Event) -> None:
        """Queue ``call`` behind every call queued before it; ``done`` is set once it ran."""
        self._queue(call, None, done)

    def _queue(
        self, call: JournalCall, loop: asyncio.AbstractEventLoop | None, waiter: _Waiter
    ) -> None:
        if (
            self._pid != PROCESS.pid
        ):  # a forked child: the parent's thread was not copied, start afresh
            self._start()
        with self._lock:
            self._items.append((call, loop, waiter))
            if not self._running:
                try:
                    threading.Thread(
                        target=self._serve, name="samekey-journal", daemon=True
                    ).start()
                except (
                    BaseException
                ):  # "can't start new thread": this call fails, the next one tries again
                    self._items.pop()
                    raise
                self._running = True  # the thread waits for this lock before it looks
            elif (
                not self._wake.is_set()
            ):  # set: the thread takes the queue before it clears it (this lock)
                self._wake.set()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self._wake.set()

    def _serve(self) -> None:
        while True:
            with self._lock:
                items, self._items = self._items, []
                if not items:
                    self._wake.clear()
            if not items:
                if (
                    self._wake.wait(0 if self._stopping else self.IDLE_SECONDS)
                    and not self._stopping
                ):
                    continue
                with self._lock:
                    if not self._items:
                        self._running = False
                        return
                continue
            try:
                outcomes = self.journal.run_batch([call for call, _, _ in items])
            except (
                BaseException
            ) as exc:  # run_batch reports per call; this is a bug or a closed journal
                outcomes = [(None, exc)] * len(items)
            by_loop: dict[
                asyncio.AbstractEventLoop,
                list[tuple[asyncio.Future[Any], Any, BaseException | None]],
            ] = {}
            for (_, loop, future), (result, error) in zip(items, outcomes, strict=True):
                if isinstance(future, threading.Event):
                    future.set()
                elif loop is not None:
                    by_loop.setdefault(loop, []).append((future, result, error))
            for loop, done in by_loop.items():
                with contextlib.suppress(
                    RuntimeError
                ):  # that loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in done:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
