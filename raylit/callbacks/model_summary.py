"""ModelSummary / RichModelSummary: print a table of the module's layers at fit start (global rank 0)."""

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from raylit.callbacks.base import Callback

log = logging.getLogger(__name__)

_UNITS = [" ", "K", "M", "B", "T"]


def get_human_readable_count(number: float) -> str:
    """``123 -> "123  "``, ``1234 -> "1.2 K"``, ``2e6 -> "2.0 M"``; never beyond T."""
    group = min((len(str(int(number))) - 1) // 3, len(_UNITS) - 1) if number > 0 else 0
    value = number / 1000**group
    if group == 0 or value >= 100:
        return f"{int(value):,d} {_UNITS[group]}"
    return f"{value:,.1f} {_UNITS[group]}"


@dataclass
class Summary:
    """What the table shows: one list of strings per column, plus the totals printed under it."""

    columns: list[tuple[str, list[str]]]
    total_parameters: int
    trainable_parameters: int
    model_size: float  # MB
    total_training_modes: dict[str, int] = field(default_factory=dict)
    total_flops: int = 0

    def __str__(self) -> str:
        return format_summary_table(self)


def summarize(module: nn.Module, max_depth: int = 1, precision: str = "32-true") -> Summary:
    """Layers of ``module`` down to ``max_depth`` (-1: all) with parameter counts and train/eval mode; with
    ``module.example_input_array`` also FLOPs and input/output sizes from one forward pass."""
    if max_depth == 0:
        layers: list[tuple[str, nn.Module]] = []
    else:
        layers = [(n, m) for n, m in module.named_modules() if n]  # without the root
        if max_depth > 0:
            layers = [(n, m) for n, m in layers if n.count(".") < max_depth]
    params = [p for p in module.parameters() if not isinstance(p, nn.parameter.UninitializedParameter)]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    counts = [sum(p.numel() for p in m.parameters()) for _, m in layers]
    modes = [m.training for m in module.modules()][1:]

    example = getattr(module, "example_input_array", None)
    flops, in_sizes, out_sizes, total_flops = _forward_example(module, layers, example)
    columns = [
        (" ", [str(i) for i in range(len(layers))]),
        ("Name", [n for n, _ in layers]),
        ("Type", [type(m).__name__ for _, m in layers]),
        ("Params", [get_human_readable_count(c) for c in counts]),
        ("Mode", ["train" if m.training else "eval" for _, m in layers]),
        ("FLOPs", [get_human_readable_count(f) for f in flops]),
    ]
    if example is not None:
        columns += [("In sizes", in_sizes), ("Out sizes", out_sizes)]
    leftover = total - sum(c for (n, _), c in zip(layers, counts) if "." not in n) if max_depth != 0 else total
    if leftover > 0:  # parameters owned directly by the root (or every parameter, with max_depth=0)
        for name, values in columns:
            values.append(
                {" ": " ", "Name": "other params", "Params": get_human_readable_count(leftover)}.get(name, "n/a")
            )
    bits = 64 if precision.startswith("64") else 16 if precision in ("16-true", "bf16-true") else 32
    return Summary(
        columns,
        total,
        trainable,
        total * bits / 8 * 1e-6,
        {"train": modes.count(True), "eval": modes.count(False)},
        total_flops,
    )


def _forward_example(module: nn.Module, layers: list[tuple[str, nn.Module]], example: Any):
    """Per-layer FLOPs and shapes from one eval-mode forward of ``example`` (zeros and "?" without one)."""
    n = len(layers)
    if example is None:
        return [0] * n, ["?"] * n, ["?"] * n, 0
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[str, tuple[Any, Any]] = {}

    def record(name: str):
        def hook(_module: nn.Module, inputs: Any, output: Any) -> None:  # must return None: keeps the output
            shapes.setdefault(name, (_shape(inputs), _shape(output)))

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in layers]
    was_training = [m.training for m in module.modules()]
    counter = FlopCounterMode(display=False)
    try:
        module.eval()
        with torch.no_grad(), counter:
            if isinstance(example, (list, tuple)):
                module(*example)
            elif isinstance(example, dict):
                module(**example)
            else:
                module(example)
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in zip(module.modules(), was_training):
            m.training = mode
    by_module = counter.get_flop_counts()
    root = type(module).__name__
    flops = [sum(by_module.get(f"{root}.{name}", {}).values()) for name, _ in layers]
    in_sizes = [str(shapes[name][0]) if name in shapes else "?" for name, _ in layers]
    out_sizes = [str(shapes[name][1]) if name in shapes else "?" for name, _ in layers]
    return flops, in_sizes, out_sizes, counter.get_total_flops()


def _shape(data: Any) -> Any:
    if hasattr(data, "shape"):
        return list(data.shape)
    if isinstance(data, (list, tuple)):
        shapes = [_shape(x) for x in data]
        return shapes[0] if len(shapes) == 1 and isinstance(data, tuple) else shapes
    return "?"


def format_summary_table(summary: Summary) -> str:
    """The plain-text table Lightning prints, totals included."""
    widths = [max([len(header)] + [len(v) for v in values]) for header, values in summary.columns]
    rule = "-" * (sum(widths) + 3 * (len(widths) + 1))
    lines = [" | ".join(f"{h:<{w}}" for (h, _), w in zip(summary.columns, widths)), rule]
    rows = zip(*(values for _, values in summary.columns))
    lines += [" | ".join(f"{v:<{w}}" for v, w in zip(row, widths)) for row in rows]
    lines.append(rule)
    lines += [f"{value:<10}{label}" for value, label in _totals(summary)]
    return "\n".join(lines)


def _totals(summary: Summary) -> list[tuple[str, str]]:
    return [
        (get_human_readable_count(summary.trainable_parameters), "Trainable params"),
        (
            get_human_readable_count(summary.total_parameters - summary.trainable_parameters),
            "Non-trainable params",
        ),
        (get_human_readable_count(summary.total_parameters), "Total params"),
        (f"{summary.model_size:,.3f}", "Total estimated model params size (MB)"),
        (str(summary.total_training_modes["train"]), "Modules in train mode"),
        (str(summary.total_training_modes["eval"]), "Modules in eval mode"),
        (get_human_readable_count(summary.total_flops), "Total Flops"),
    ]


class ModelSummary(Callback):
    """At fit start, log the layer table (names, types, parameter counts, train/eval mode, FLOPs; input and
    output sizes when the module sets ``example_input_array``) on global rank 0.

    Args:
        max_depth: how deep to list nested modules; 0 turns the summary off, -1 lists every module.
        **summarize_kwargs: passed to :meth:`summarize` (``RichModelSummary`` reads ``header_style``).

    Override :meth:`summarize` (same arguments as Lightning's) to print it differently.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer, pl_module) -> None:
        if not self._max_depth:
            return
        # The example forward runs on every rank, as in Lightning: under FSDP a forward is a collective
        # (parameters are gathered), and a rank-0-only forward would wait forever for the others.
        if not trainer.is_global_zero and getattr(pl_module, "example_input_array", None) is None:
            return
        s = summarize(pl_module, self._max_depth, str(getattr(trainer, "precision", "32-true")))
        if not trainer.is_global_zero:
            return
        self.summarize(
            s.columns,
            s.total_parameters,
            s.trainable_parameters,
            s.model_size,
            s.total_training_modes,
            total_flops=s.total_flops,
            **self._summarize_kwargs,
        )

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        summary = Summary(
            summary_data,
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
        )
        log.info("\n" + format_summary_table(summary))


class RichModelSummary(ModelSummary):
    """:class:`ModelSummary` drawn as a rich table on the rich console."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        from rich import get_console
        from rich.table import Table

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for header, _ in summary_data:
            right = header in ("Params", "FLOPs", "In sizes", "Out sizes")
            table.add_column(header, justify="right" if right else "left", style="dim" if header == " " else None)
        for row in zip(*(values for _, values in summary_data)):
            table.add_row(*row)
        summary = Summary(
            summary_data,
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            total_flops,
        )
        grid = Table.grid(expand=True)
        grid.add_column()
        for value, label in _totals(summary):
            grid.add_row(f"[bold]{label}[/]: {value.strip()}")
        console = get_console()
        console.print(table)
        console.print(grid)
