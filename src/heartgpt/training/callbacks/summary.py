"""The model summary printed when fitting starts (``callbacks.rich_model_summary``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)


class ModelSummary(RichModelSummary):
    """Lightning's Rich model summary without its FLOPs column when they are all 0 (Lightning
    counts FLOPs only for modules with an ``example_input_array``) and, with ``hide_empty``, without the rows of
    modules that hold no parameters (metric collections)."""

    def __init__(self, max_depth: int = 1, hide_empty: bool = False, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self._summarize_kwargs["hide_empty"] = hide_empty

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int,
                  trainable_parameters: int, model_size: float,
                  total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        dropped = () if total_flops else ("FLOPs",)
        columns = [(name, values) for name, values in summary_data if name not in dropped]
        names = [name for name, _ in columns]
        rows = list(zip(*(values for _, values in columns), strict=True))
        if summarize_kwargs.get("hide_empty", False) and "Params" in names:
            at = names.index("Params")
            rows = [row for row in rows if row[at].strip() != "0"]

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name in names:
            style = {" ": "dim", "In sizes": "white", "Out sizes": "white"}.get(name)
            justify = "right" if name in ("Params", "Params per Device", "In sizes", "Out sizes") else "left"
            table.add_column(name, justify=justify, style=style, no_wrap=name == "Name")
        for row in rows:
            table.add_row(*row)
        console = get_console()
        console.print(table)

        frozen = total_parameters - trainable_parameters
        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_row(f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}"
                     f"    [bold]Frozen[/]: {get_human_readable_count(int(frozen))}"
                     f"    [bold]Size[/]: {get_formatted_model_size(model_size)} MB")
        if total_flops:
            grid.add_row(f"[bold]Total FLOPs[/]: {get_human_readable_count(total_flops)}")
        if total_training_modes.get("eval"):
            grid.add_row(f"[bold]Modules in eval mode[/]: {total_training_modes['eval']}"
                         f" (of {sum(total_training_modes.values())})")
        console.print(grid)
