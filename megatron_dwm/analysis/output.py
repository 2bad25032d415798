"""Writing results: atomically (through a temporary file renamed into place), and matplotlib
figures drawn outside pyplot's global state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through a temporary file beside it, renamed into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def agg_figure(**kwargs: Any) -> Any:
    """A matplotlib figure drawn by the Agg backend, outside pyplot's global state (nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG (atomically)."""
    return write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))
