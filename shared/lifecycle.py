"""A service's resources: started in order, closed once, in reverse, by one mechanism.

A service's ``start`` builds its resources one after another inside
:meth:`Lifecycle.starting` and registers how to close each right after building it;
its ``stop`` is :meth:`Lifecycle.aclose`. This gives every service the shutdown order
of STYLE.md item 8 without a ladder of ``if x is not None`` checks: what was started
last (the listener, the consumers) is closed first, what everything else needs (the
broker connection, the database, the threads) last, and only what was started is
closed. The graceful part of a shutdown (stop accepting, drain in-flight work with a
deadline, close WebSockets with 1001) is the last step a service registers, so it runs
first.

Closing never stops half way:

- a step that raises is logged and the next one runs;
- the steps that talk to something that may be away (the broker, a client) are
  *bounded*: together they take at most ``deadline_s``, and a step still running when
  the time left is used up is cancelled and logged. A drain registers itself unbounded
  because it applies its own deadline (a service's shutdown deadline), and synchronous
  steps (an executor's shutdown, an engine's disposal) run as they are;
- a failure while starting closes what was already started, then propagates.

The mechanism is :class:`contextlib.AsyncExitStack`: each step is pushed onto it
wrapped in the guard above. Nothing here is specific to Warren's own services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")


class Lifecycle:
    """One service's resources, closed in the reverse of the order they were registered."""

    def __init__(self, name: str, *, deadline_s: float) -> None:
        self._name = name
        self._stack = contextlib.AsyncExitStack()
        self._closing: asyncio.Future[None] | None = None
        self._budget_s = deadline_s  # what the bounded steps have left, together

    @property
    def closing(self) -> bool:
        """True from the moment :meth:`aclose` is called (a service is no longer ready)."""
        return self._closing is not None

    @contextlib.asynccontextmanager
    async def starting(self) -> AsyncIterator[Lifecycle]:
        """Wrap a service's start: if it fails (or is cancelled), close what it started."""
        try:
            yield self
        except BaseException:
            log.warning("%s did not start; closing what it started", self._name)
            await self.aclose()
            raise

    def callback(self, close: Callable[P, object], /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Register a synchronous closing step; it runs unbounded."""
        name = _name_of(close)

        async def step() -> None:
            close(*args, **kwargs)

        self._push(step, name, bounded=False)

    def push_async_callback(
        self,
        close: Callable[..., Awaitable[object]],
        /,
        *args: Any,
        bounded: bool = True,
        name: str | None = None,
    ) -> None:
        """Register an asynchronous closing step.

        ``bounded=False`` for a step that applies its own deadline (a drain), which the
        shared ``deadline_s`` must not cut short.
        """

        async def step() -> None:
            await close(*args)

        self._push(step, name or _name_of(close), bounded=bounded)

    def create_task(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``work`` in the background until closing cancels it (a bounded step)."""
        task = asyncio.create_task(work, name=name)

        async def cancel() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.push_async_callback(cancel, name=name)
        return task

    async def enter_async(
        self, resource: AbstractAsyncContextManager[T], *, name: str | None = None
    ) -> T:
        """Enter ``resource`` now; its exit is a bounded closing step."""
        value = await resource.__aenter__()
        self.push_async_callback(
            resource.__aexit__, None, None, None, name=name or type(resource).__name__
        )
        return value

    def enter(self, resource: AbstractContextManager[T], *, name: str | None = None) -> T:
        """Enter ``resource`` now; its exit is a synchronous closing step."""
        value = resource.__enter__()
        self.callback(resource.__exit__, None, None, None)
        return value

    async def aclose(self) -> bool:
        """Run every registered step, last registered first; return once all have run.

        Safe to call more than once, and from several tasks: later calls wait for the
        first to finish. True for the call that ran the steps, False for the others.
        """
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return False
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._stack.aclose()
        finally:
            self._closing.set_result(None)
        return True

    def _push(self, step: Callable[[], Awaitable[None]], name: str, *, bounded: bool) -> None:
        if self._closing is not None:
            raise RuntimeError(f"{self._name} is closing: {name} cannot be registered")

        async def guarded() -> None:
            await self._run(step, name, bounded=bounded)

        self._stack.push_async_callback(guarded)

    async def _run(self, step: Callable[[], Awaitable[None]], name: str, *, bounded: bool) -> None:
        try:
            if not bounded:
                await step()
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                async with asyncio.timeout(self._budget_s):
                    await step()
            finally:
                self._budget_s = max(0.0, self._budget_s - (loop.time() - started))
        except TimeoutError:
            log.warning("%s: %s did not finish before the shutdown deadline", self._name, name)
        except Exception:
            log.warning("%s: %s failed while closing", self._name, name, exc_info=True)


def _name_of(close: Callable[..., object]) -> str:
    owner = getattr(close, "__self__", None)
    label = getattr(close, "__qualname__", None) or repr(close)
    if owner is not None and "." not in label:
        return f"{type(owner).__name__}.{label}"
    return label
