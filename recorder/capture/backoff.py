"""The reconnect schedule: a pure object, tested without sockets."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

# No delay is longer than a day (config.py refuses longer ones).
MAX_DELAY = 86_400.0


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
        """min(cap, base * factor**attempt), computed so that it cannot overflow
        (configuration bounds the values, but this object must not depend on it):
        the product grows one factor at a time and stops as soon as it reaches the cap."""
        cap = self.limit
        ceiling = min(self.base, cap)
        for _ in range(min(self.attempt, 64)):
            if ceiling >= cap:
                break
            ceiling = min(ceiling * self.factor, cap)  # at most cap * factor: finite
        return ceiling if math.isfinite(ceiling) else cap

    @property
    def limit(self) -> float:
        """The cap, and never more than a day: a delay always converts to a time."""
        cap = self.cap if math.isfinite(self.cap) else MAX_DELAY
        return max(0.0, min(cap, MAX_DELAY))

    def next_delay(self) -> float:
        delay = self.rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def capped_delay(self) -> float:
        """For rejections that won't fix themselves soon (401/403): wait the full cap."""
        self.attempt += 1
        return self.limit

    def reset(self) -> None:
        self.attempt = 0

    @property
    def exhausted(self) -> bool:
        return self.max_attempts > 0 and self.attempt >= self.max_attempts
