"""The figures of reports and bench scripts are written to files, on servers and CI machines without a
display: every plot gets its pyplot here, on the file-only Agg backend."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend; imported on first use (about a second, and most commands draw nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
