"""What every route of the server shares with the others: moving work off the event loop only when
it is large, and awaiting the engine's answer with a bound."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

from submission.engine import Engine, RequestTimeout

TIMEOUT_GRACE_S = 5.0  # the engine times requests out between steps; this catches a hung step
INLINE_LIMIT = 50_000  # characters or tokens handled on the event loop; larger inputs go to a thread


async def inline_if_small(size: int, work, *args):
    """Tokenizing a prompt takes about a millisecond: cheaper on the event loop than a thread
    hand-off. A huge input would hold the loop up, so it runs on a thread."""
    return work(*args) if size <= INLINE_LIMIT else await asyncio.to_thread(work, *args)


async def settle(engine: Engine, futures: list[Future]) -> list[dict]:
    """The engine's answers to submitted requests, in order. Should one fail, or a step hang past
    request_timeout_s, the others are cancelled (the engine drops them) and the error is raised."""
    limit = engine.settings.request_timeout_s + TIMEOUT_GRACE_S
    waiting = [asyncio.wrap_future(future) for future in futures]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*waiting), limit))
    except TimeoutError:  # the worker is stuck in one step: answer anyway
        raise RequestTimeout(f"the request was not served within {limit} s (a step hung)") from None
    finally:
        for future in futures:
            future.cancel()  # no effect on a settled one
