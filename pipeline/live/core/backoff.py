"""Exponential backoff, the reconnect policy shared by sources and both runtimes.

A source that lost its stream, a runtime waiting for an actor and a client retrying a call all
wait ``initial_s * factor**k`` seconds before attempt ``k + 1`` (capped at ``max_s``) and give up
after ``max_attempts`` failures in a row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """Exponential backoff: ``initial_s * factor**k`` seconds, capped at ``max_s``.

    Args:
        initial_s: First delay.
        max_s: Longest delay.
        factor: Growth per failed attempt (>= 1).
        max_attempts: Failed attempts in a row before giving up; None retries forever.
    """

    initial_s: float = 0.2
    max_s: float = 5.0
    factor: float = 2.0
    max_attempts: int | None = None
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s or self.factor < 1.0:
            raise ValueError(
                f"backoff needs 0 <= initial_s <= max_s and factor >= 1, got initial_s={self.initial_s}, "
                f"max_s={self.max_s}, factor={self.factor}"
            )

    def next_delay_s(self) -> float:
        """Delay before the next attempt; counts one more failed attempt."""
        delay = min(self.max_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        return delay

    @property
    def exhausted(self) -> bool:
        return self.max_attempts is not None and self.attempts >= self.max_attempts

    def reset(self) -> None:
        self.attempts = 0
