"""``lightning.pytorch.loops.evaluation_loop``: the results table ``validate``/``test`` print.

raylit's evaluation loop itself is ``raylit.evaluation`` (functions over ``raylit.loop.Loop``); what lives here is
the one piece of Lightning's ``_EvaluationLoop`` user code and tests reach: ``_EvaluationLoop._print_results`` and
the ``_RICH_AVAILABLE`` switch between the rich table and the plain-text one (same layout and wording as
Lightning's, so logs and doc snippets read the same).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["_EvaluationLoop", "_RICH_AVAILABLE"]

_RICH_AVAILABLE = importlib.util.find_spec("rich") is not None


def _leaves(d: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) for every non-mapping value of a nested dict."""
    for key, value in d.items():
        path = (*prefix, key)
        if isinstance(value, Mapping):
            yield from _leaves(value, path)
        else:
            yield path, value


def _cell(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    return f"{value}"


def _bar_character() -> str:
    encoding = getattr(sys.stdout, "encoding", None)
    if not isinstance(encoding, str):
        return "─"
    try:
        "─".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "-"
    return "─"


class _EvaluationLoop:
    """Namespace of Lightning's evaluation-loop class; raylit keeps only the results table here."""

    @staticmethod
    def _print_results(results: list[dict[str, Any]], stage: str) -> None:
        """Print one column per dataloader and one row per metric (nested dicts as ``a:b`` rows), sorted by
        name, split into several tables when the dataloaders do not fit the terminal width."""
        per_loader: list[dict[tuple[str, ...], Any]] = []
        for result in results:
            flat: dict[tuple[str, ...], Any] = {}
            for path, value in _leaves({k.split("/dataloader_idx_")[0]: v for k, v in result.items()}):
                flat[path] = value
            per_loader.append(flat)
        names = sorted({":".join(p): p for flat in per_loader for p in flat}.items())
        if not names:
            return
        headers = [f"DataLoader {i}" for i in range(len(results))]
        term = shutil.get_terminal_size(fallback=(120, 30)).columns or 120
        widest = max(max(len(n) for n, _ in names), max(len(h) for h in headers), 25)
        width = int(min(widest, term / 2))
        per_table = int((term - width) / width)
        title = f"{stage} metric".capitalize()
        cells = [[_cell(flat[p]) if p in flat else " " for flat in per_loader] for _, p in names]
        for start in range(0, len(headers), per_table):
            cols = [title, *headers[start:start + per_table]]
            rows = [[name, *row[start:start + per_table]] for (name, _), row in zip(names, cells)]
            if _RICH_AVAILABLE:
                _rich_table(cols, rows, width)
            else:
                _plain_table(cols, rows, width, term)


def _rich_table(cols: list[str], rows: list[list[str]], width: int) -> None:
    from rich import get_console
    from rich.table import Column, Table

    table = Table(*(Column(c, justify="center", style="cyan" if i == 0 else "magenta", width=width)
                    for i, c in enumerate(cols)))
    for row in rows:
        table.add_row(*row)
    get_console().print(table)


def _plain_table(cols: list[str], rows: list[list[str]], width: int, term: int) -> None:
    def fmt(cells: list[str]) -> str:
        cells = cells + [" "] * (len(cols) - len(cells))
        return "".join(f"{c:^{width}}" for c in cells).rstrip()

    bar = _bar_character() * term
    half = int(term / 2)
    lines = [bar, fmt(cols), bar]
    for name, *values in rows:
        while len(name) > half:  # a long name wraps over several lines; the values go on its first line
            lines.append(fmt([name[:half], *values]))
            name, values = name[half:], []
        lines.append(fmt([name, *values]) if values else fmt([name, " "]))
    lines.append(bar)
    print(os.linesep.join(lines))
