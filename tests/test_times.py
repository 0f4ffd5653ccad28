from __future__ import annotations

import random

import pytest

from recorder.capture.backoff import Backoff
from recorder.times import format_us, parse_when

NOW = 1_795_692_537_464_000


def test_format_is_iso_utc_with_microseconds() -> None:
    assert format_us(1795692537464123) == "2026-11-26T11:28:57.464123Z"
    assert format_us(0) == "1970-01-01T00:00:00.000000Z"
    assert format_us(None) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T11:28:57.464Z", NOW),
        ("2026-11-26T11:28:57.464", NOW),
        ("2026-11-26T12:28:57.464+01:00", NOW),
        ("2026-11-26", 1795651200000000),
        ("90s", NOW - 90_000_000),
        ("15m", NOW - 900_000_000),
        ("2h", NOW - 7_200_000_000),
        ("1.5d", NOW - 129_600_000_000),
        ("1w ago", NOW - 604_800_000_000),
    ],
)
def test_parse_when(text: str, expected: int) -> None:
    assert parse_when(text, now_us=NOW) == expected


def test_parse_when_rejects_nonsense_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"not a time: .last tuesday.*15m"):
        parse_when("last tuesday")


class FixedRng(random.Random):
    """Returns the top of the range, so the test sees the ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    b = Backoff(base=3, factor=2, cap=300, rng=FixedRng())
    delays = [b.next_delay() for _ in range(10)]
    assert delays == [3, 6, 12, 24, 48, 96, 192, 300, 300, 300]
    b.reset()
    assert b.next_delay() == 3


def test_backoff_is_full_jitter() -> None:
    b = Backoff(base=3, factor=2, cap=300, rng=random.Random(1))
    samples = []
    for _ in range(200):
        b.attempt = 3
        samples.append(b.next_delay())
    assert all(0 <= d <= 24 for d in samples)
    assert min(samples) < 3 and max(samples) > 20  # spread over the whole range


def test_backoff_limits_and_capped_delay() -> None:
    b = Backoff(base=1, factor=2, cap=60, max_attempts=3, rng=FixedRng())
    assert b.capped_delay() == 60
    b.next_delay()
    assert not b.exhausted
    b.next_delay()
    assert b.exhausted
    # Days of failures must not overflow the exponent.
    b.attempt = 10_000
    assert b.next_delay() == 60
