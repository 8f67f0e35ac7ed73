"""What every ``stopwise`` command shares: the command group, the consoles, the common options and helpers.

Any :class:`StopwiseError` raised by a command becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from stopwise import __version__
from stopwise.errors import StopwiseError

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
# soft wrap: an error or a hint naming a long path stays on one line (copyable, greppable in logs)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _command_line() -> str:
    return "stopwise " + " ".join(shlex.quote(a) for a in sys.argv[1:])


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StopwiseError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, markup=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="stopwise")
def cli() -> None:
    """Certified early stopping for reasoning LLMs."""


_risk = click.option("--risk", default="disagreement", show_default=True, type=click.Choice(["disagreement", "accuracy", "selective"]))
_eps = click.option("--epsilon", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
_delta = click.option("--delta", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
_seed = click.option("--seed", default=0, show_default=True, type=int)
_traces = click.option("--traces", "traces", multiple=True, type=click.Path(path_type=Path), help="Trace-set directory (repeatable; default: the bundled sets).")


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _report_per_set(traces, title: str, columns: tuple[str, ...], n_left: int, report, cells, json_out: Path | None,  # noqa: ANN001
                    footer: str | None = None) -> None:
    """One table over the sets: ``report(ts)`` gives rows (a set it refuses is skipped, saying why), ``cells(row)`` their cells."""
    from rich.table import Table

    from stopwise.errors import ConfigError

    rows: list[dict] = []
    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i < n_left else "right")
    for ts in _load_sets(traces):
        try:
            rs = report(ts)
        except ConfigError as exc:
            err_console.print(f"{ts.name}: skipped ({exc})")
            continue
        rows += rs
        for r in rs:
            t.add_row(ts.name, *cells(r))
    console.print(t)
    if footer:
        console.print(footer)
    if json_out:
        _write_json(json_out, rows)


_CASCADE_SCORES = ("vote_share", "vote_margin", "probe_agreement", "probe_confidence", "answer_probability")

def _load_sets(dirs: tuple[Path, ...] | list[Path]) -> list:
    from stopwise.data import bundled_paths
    from stopwise.traces import read_trace_set

    paths = list(dirs) if dirs else bundled_paths()
    return [read_trace_set(p) for p in paths]
