"""Spans of event time. Times are integer milliseconds since the Unix epoch everywhere (records, windows,
logs, the simulator, reports), so the spans they are counted in are defined once, here."""

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
