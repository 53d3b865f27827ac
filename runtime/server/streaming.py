"""Engine streams behind one HTTP response, and ending engine work when the client goes away.

Both paths guarantee: however a response ends (finished, client disconnected, server cancelled),
the engine requests behind it are aborted and their KV slots freed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator, Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import StreamingResponse

from runtime.server.encoding import SSE_DONE, sse
from runtime.server.errors import APIError, engine_errors, from_value_error
from runtime.server.metrics import TokenGapTimer

logger = logging.getLogger(__name__)


class ClientDisconnected(Exception):
    pass


class StreamSession:
    """Several engine streams merged in arrival order, so n choices interleave as they are produced.

    Each stream is pumped by its own task into one queue. close() cancels the pumps (an engine stream
    aborts its request when it is cancelled or closed early) and aborts every unfinished rid.
    """

    def __init__(self, engine):
        self._engine = engine
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._rids: list[str] = []
        self._finished: set[int] = set()

    @classmethod
    async def open(cls, engine, calls: list[dict]) -> "StreamSession":
        """Submit calls[i] (`async_generate` kwargs with a `rid`) as stream i. If one is invalid, the
        ValueError propagates and the streams already submitted are aborted."""
        session = cls(engine)
        try:
            for index, call in enumerate(calls):
                stream = await engine.async_generate(stream=True, **call)
                session._rids.append(call["rid"])
                session._tasks.append(asyncio.create_task(session._pump(index, stream)))
                # NOTE: let the pump enter the engine stream now: cancelling a task that never
                # started would leave its stream unstarted, and its cleanup would never run.
                await asyncio.sleep(0)
        except BaseException:
            await session.close()
            raise
        return session

    def __len__(self) -> int:
        return len(self._tasks)

    async def _pump(self, index: int, stream) -> None:
        try:
            async for chunk in stream:
                self._queue.put_nowait((index, chunk, None))
        except Exception as exc:  # handed to the consumer; CancelledError is not an Exception
            self._queue.put_nowait((index, None, exc))
        else:
            self._queue.put_nowait((index, None, None))

    async def events(self) -> AsyncIterator[tuple[int, dict]]:
        """(stream index, chunk) until every stream has finished."""
        while len(self._finished) < len(self._tasks):
            index, chunk, exc = await self._queue.get()
            if exc is not None:
                raise exc
            if chunk is None:
                self._finished.add(index)
                continue
            yield index, chunk

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for index, rid in enumerate(self._rids):
            if index not in self._finished:
                self._engine.abort(rid)
        with contextlib.suppress(BaseException):
            await asyncio.gather(*self._tasks, return_exceptions=True)


class EngineStreamResponse(StreamingResponse):
    """An SSE response that runs `on_close` however it ends: finished, client gone, or cancelled.

    Starlette cancels the body when the client disconnects (it listens for http.disconnect while
    streaming); `on_close` then aborts the engine work even if the body never started.
    """

    def __init__(self, body: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]):
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


async def until_disconnected(request: Request, work: Awaitable):
    """Await `work` (a non-streamed generation); cancel it and raise ClientDisconnected if the
    client disconnects first. Cancelling an engine call aborts its requests."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message can only be the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def sse_response(
    state,
    calls: list[dict],
    ticket,
    renames: dict,
    render: Callable[[int, dict], Iterable[dict]],
    tail: Callable[[], Iterable[dict]] = lambda: (),
) -> EngineStreamResponse:
    """Open `calls` as engine streams and answer with SSE: `render(index, chunk)` gives the objects
    to send for each engine chunk, `tail()` what to send after the last, then `data: [DONE]`.

    Takes ownership of `ticket` (released when the response ends). Invalid calls raise APIError 400
    before any byte is sent; an error mid-stream is sent as an error event before [DONE].
    """
    cleanup = contextlib.ExitStack()
    cleanup.callback(ticket.release)
    cleanup.enter_context(state.tracking(call["rid"] for call in calls))
    try:
        with engine_errors(renames):
            session = await StreamSession.open(state.engine, calls)
    except BaseException:
        cleanup.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        timers = [TokenGapTimer(state.metrics) for _ in range(len(session))]
        try:
            async for index, chunk in session.events():
                timers[index].on_tokens(len(chunk["output_ids"]))
                if chunk["meta_info"].get("finish_reason") is not None:
                    state.metrics.observe_finished(chunk["meta_info"], streamed=True)
                for obj in render(index, chunk):
                    yield sse(obj)
            for obj in tail():
                yield sse(obj)
        except ValueError as exc:
            yield sse(from_value_error(exc, renames).body())
        except Exception:  # the headers are sent: report in-band, never cut the stream silently
            logger.exception("stream failed")
            yield sse(APIError(500, "internal server error").body())
        yield SSE_DONE

    async def on_close() -> None:
        await session.close()
        cleanup.close()

    return EngineStreamResponse(body(), on_close)
