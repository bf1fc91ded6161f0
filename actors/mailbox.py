"""Ask an actor something and wait for its answer: a request message carries its own reply slot."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot answer. The actor calls `send`; the asker awaits `wait`."""

    __slots__ = ("_done", "_value")

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: T | None = None

    def send(self, value: T) -> None:
        self._value = value
        self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        return self._value  # type: ignore[return-value]  # send() set it before the event fired
