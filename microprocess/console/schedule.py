"""When a job's EventBridge schedule fires next (the Jobs page's "next run").

`cron(min hour day-of-month month day-of-week year)` in UTC, as EventBridge reads it: `*`, `?`,
numbers, `a-b` ranges, `,` lists, `/n` steps, month and weekday names (`JAN`, `MON`; weekdays
1-7 are SUN-SAT). The `L`, `W` and `#` forms give no time here (None: the page shows the
expression). A `rate(...)` schedule fires relative to when its rule was created, which the
declaration does not hold: `next_fire` gives None and `describe` says how often.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_MONTH_NAMES = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC"
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES.split(), start=1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], start=1)}
_RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
#: How far ahead a cron expression is searched, days.
HORIZON_DAYS = 366 * 5


class _Unsupported(ValueError):
    pass


def _field(text: str, low: int, high: int, names: dict[str, int] | None = None) -> set[int] | None:
    """The values a cron field allows; None for `*` / `?` (any)."""
    if text in ("*", "?"):
        return None
    if any(c in text for c in "LW#"):
        raise _Unsupported(text)
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = _value(a, names), _value(b, names)
        else:
            start = _value(base, names)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    return values


def _value(text: str, names: dict[str, int] | None) -> int:
    upper = text.upper()
    if names and upper in names:
        return names[upper]
    return int(text)


def next_fire(schedule: str, now: datetime | None = None) -> datetime | None:
    """The first time after `now` (UTC) a `cron(...)` schedule fires; None for `rate(...)`, a form
    this does not read, or no time within `HORIZON_DAYS`."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if not schedule.startswith("cron(") or not schedule.endswith(")"):
        return None
    fields = schedule[5:-1].split()
    if len(fields) != 6:
        return None
    try:
        minutes = _field(fields[0], 0, 59)
        hours = _field(fields[1], 0, 23)
        doms = _field(fields[2], 1, 31)
        months = _field(fields[3], 1, 12, _MONTHS)
        dows = _field(fields[4], 1, 7, _DAYS)
        years = _field(fields[5], 1970, 2199)
    except (_Unsupported, ValueError):
        return None
    minute_list = sorted(minutes) if minutes is not None else list(range(60))
    hour_list = sorted(hours) if hours is not None else list(range(24))
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    day = start.replace(hour=0, minute=0)
    for _ in range(HORIZON_DAYS):
        if (
            (years is None or day.year in years)
            and (months is None or day.month in months)
            and (doms is None or day.day in doms)
            and (dows is None or (day.isoweekday() % 7) + 1 in dows)
        ):
            for h in hour_list:
                for m in minute_list:
                    at = day.replace(hour=h, minute=m)
                    if at >= start:
                        return at
        day += timedelta(days=1)
    return None


def describe(schedule: str) -> str:
    """A short reading of the schedule: `every 5 minutes`, or the cron expression itself."""
    rate = _RATE.match(schedule)
    if rate:
        n, unit = int(rate.group(1)), rate.group(2).rstrip("s")
        return f"every {n} {unit}{'s' if n != 1 else ''}"
    return schedule
