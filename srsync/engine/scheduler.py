"""When a job runs next: intervals, 5-field cron expressions, and retry backoff."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from srsync.config.models import CRON_FIELDS, cron_problem, interval_seconds
from srsync.errors import ConfigError

# A cron search never looks further ahead than this (a Feb 30 schedule never fires).
_CRON_HORIZON_DAYS = 366 * 5


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed 5-field cron expression (Vixie semantics for day of month / day of week)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday; 7 is folded into 0
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        problem = cron_problem(text)
        if problem:
            raise ConfigError(f"schedule {text!r}: {problem}")
        sets: list[frozenset[int]] = []
        for raw, (_what, low, high) in zip(text.split(), CRON_FIELDS, strict=True):
            values: set[int] = set()
            for item in raw.split(","):
                body, _, step_text = item.partition("/")
                step = int(step_text) if step_text else 1
                if body == "*":
                    start, end = low, high
                else:
                    a, dash, b = body.partition("-")
                    start = int(a)
                    # "N/STEP" means N, N+STEP, ... up to the field's maximum
                    end = int(b) if dash else (high if step_text else start)
                values.update(range(start, end + 1, step))
            sets.append(frozenset(values))
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])
        fields = text.split()
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays,
                   not fields[2].startswith("*"), not fields[4].startswith("*"))

    def _day_matches(self, day: dt.date) -> bool:
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow  # cron: either restriction suffices when both are given
        return dom and dow

    def next_after(self, when: float) -> float:
        """The first matching minute strictly after ``when`` (local time), as epoch seconds."""
        t = dt.datetime.fromtimestamp(when).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = t + dt.timedelta(days=_CRON_HORIZON_DAYS)
        while t < limit:
            if t.month not in self.months or not self._day_matches(t.date()):
                t = (t + dt.timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if t.hour not in self.hours:
                t = (t + dt.timedelta(hours=1)).replace(minute=0)
                continue
            if t.minute not in self.minutes:
                t += dt.timedelta(minutes=1)
                continue
            return t.timestamp()
        raise ConfigError("the cron schedule never fires")


@dataclass(frozen=True, slots=True)
class Schedule:
    """A job's ``schedule``: an interval in seconds, or a cron expression."""

    text: str
    interval: int | None = None
    cron: Cron | None = None

    @classmethod
    def parse(cls, text: str) -> Schedule:
        seconds = interval_seconds(text.strip())
        if seconds is not None:
            if seconds <= 0:
                raise ConfigError(f"schedule {text!r}: an interval must be longer than 0s")
            return cls(text, interval=seconds)
        return cls(text, cron=Cron.parse(text.strip()))

    def next_after(self, last_start: float | None, now: float) -> float:
        """When to run next.  Intervals count from the last start (so a run that takes a
        while does not shift the rhythm), never earlier than ``now``; the first run of an
        interval job is immediate."""
        if self.interval is not None:
            if last_start is None:
                return now
            return max(now, last_start + self.interval)
        assert self.cron is not None
        return self.cron.next_after(now)  # missed minutes are not caught up


@dataclass(slots=True)
class Backoff:
    """Exponential retry delays: base, 2*base, 4*base, ... capped at ``cap`` seconds."""

    base: float = 2.0
    cap: float = 300.0
    failures: int = 0

    def next_delay(self) -> float:
        """Record one more failure and return how long to wait before retrying (> 0)."""
        self.failures += 1
        return max(0.1, min(self.cap, self.base * 2 ** (self.failures - 1)))

    def reset(self) -> None:
        self.failures = 0
