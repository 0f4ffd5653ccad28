"""The reconnect schedule: a pure object, tested without sockets."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Exponential backoff with full jitter: delay = uniform(0, min(cap, base * factor**n))."""

    base: float
    factor: float
    cap: float
    max_attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        # Bound the exponent so factor**attempt cannot overflow after days of failures.
        return min(self.cap, self.base * self.factor ** min(self.attempt, 64))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def capped_delay(self) -> float:
        """For rejections that won't fix themselves soon (401/403): wait the full cap."""
        self.attempt += 1
        return self.cap

    def reset(self) -> None:
        self.attempt = 0

    @property
    def exhausted(self) -> bool:
        return self.max_attempts > 0 and self.attempt >= self.max_attempts
