"""A list that grows with a session, kept to what a person can read. Pure."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Kept(Generic[T]):
    """The first and the last ``keep`` items of a list that grows with the session
    (numbered from 0 as they come), and how many came."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.first: list[T] = []
        self.last: deque[T] = deque(maxlen=keep)
        self.total = 0

    def add(self, item: T) -> int:
        """Keep ``item`` if it is among the first or the last; its number."""
        if len(self.first) < self.keep:
            self.first.append(item)
        else:
            self.last.append(item)
        self.total += 1
        return self.total - 1

    def _where(self, number: int) -> tuple[list[T] | deque[T], int] | None:
        if number < len(self.first):
            return self.first, number
        offset = number - (self.total - len(self.last))
        return (self.last, offset) if 0 <= offset < len(self.last) else None

    def get(self, number: int) -> T | None:
        found = self._where(number)
        return None if found is None else found[0][found[1]]

    def set(self, number: int, item: T) -> None:
        """Replace item ``number`` if it is kept (a call that got its result)."""
        found = self._where(number)
        if found is not None:
            found[0][found[1]] = item

    @property
    def items(self) -> list[T]:
        return [*self.first, *self.last]

    @property
    def left_out(self) -> int:
        return self.total - len(self.first) - len(self.last)
