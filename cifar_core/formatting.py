"""Figures as short text, the same everywhere: percentages, durations, settings, and the
mark for a figure that does not exist yet."""

from __future__ import annotations

MISSING = "—"


def format_percent(value: object, digits: int = 1) -> str:
    """A fraction as a percentage (0.873 -> "87.3%"); MISSING for anything but a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}%}"
    return MISSING


def format_seconds(seconds: float | None) -> str:
    """Short on purpose (``42s``, ``3m 05s``, ``12m``, ``1h 12m``): it must fit a narrow metric.

    Six metrics share a row on the Train page; at 1280 pixels wide ``12m 05s`` is already
    cut to ``12m …``, so from ten minutes on the seconds are left out.
    """
    if seconds is None:
        return MISSING
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 10:
        return f"{minutes}m {seconds:02d}s"
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_setting(value: object) -> str:
    """A setting as a short string for a table: tuples as "32, 64", None as MISSING."""
    if value is None:
        return MISSING
    if isinstance(value, tuple):
        return ", ".join(format_setting(v) for v in value) or "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_images(count: object) -> str:
    """A training subset's size ("2,000"), or "all" for a run on the whole training set."""
    if isinstance(count, int | float) and count == count and count:
        return f"{int(count):,}"
    return "all"


def format_count(value: float | None) -> str:
    """A rate or count rounded to a whole number with thousands separators; MISSING when unknown."""
    return f"{value:,.0f}" if value else MISSING


def format_parameters(count: int) -> str:
    """A parameter count as people say it: exact below a million ("167,818"), else "1.97 M"
    (the exact figure of a larger one does not fit the Model page's metric)."""
    return f"{count:,}" if count < 1_000_000 else f"{count / 1e6:.2f} M"
