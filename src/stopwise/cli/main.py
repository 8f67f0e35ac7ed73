"""``stopwise``: collect, import, inspect, replay, calibrate, validate and bench.

Every command is a thin layer over the library. Any :class:`StopwiseError`
becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from stopwise import __version__
from stopwise.errors import StopwiseError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


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


@cli.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Trace-set directory to create.")
@click.option("--format", "fmt", default="auto", show_default=True, type=click.Choice(["auto", "stopwise", "grouped", "reasoning"]))
@click.option("--name", default=None, help="Name of the set (default: the --out directory name).")
@click.option("--tokenizer", default=None, type=click.Choice(["qwen2.5", "regex", "none"]), help="How to count tokens of texts without logprobs (default: regex for text formats).")
@click.option("--map", "mapping", default=None, help="Field mapping for --format grouped: a preset (qwen-eval) or key=field,...")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory (atomically).")
def import_cmd(paths: tuple[Path, ...], out: Path, fmt: str, name: str | None, tokenizer: str | None, mapping: str | None, overwrite: bool) -> None:
    """Import trace files (stopwise JSONL, grouped multi-sample, reasoning text) into a trace set."""
    from stopwise.errors import TraceSetError
    from stopwise.traces import write_trace_set
    from stopwise.traces.importers import import_traces

    if out.exists() and not overwrite:
        raise TraceSetError(f"output directory '{out}' already exists", hint="choose another --out or pass --overwrite")
    with console.status(f"importing {len(paths)} file(s)..."):
        ts = import_traces(list(paths), name=name or out.name, fmt=fmt, tokenizer=tokenizer, mapping=mapping, command=_command_line())
        write_trace_set(ts, out, overwrite=overwrite)
    console.print(
        f"wrote [bold]{out}[/]: {ts.n_questions} questions, {ts.n_chains} chains, {ts.n_tokens} tokens, "
        f"hash {ts.content_hash[:12]}"
    )


@cli.command("inspect")
@click.argument("dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the summaries as JSON.")
def inspect_cmd(dirs: tuple[Path, ...], json_out: Path | None) -> None:
    """Summarize trace sets (default: every bundled set)."""
    from stopwise.cli.render import render_summary
    from stopwise.report.inspect import summarize

    sets = _load_sets(dirs)
    summaries = []
    for ts in sets:
        s = summarize(ts)
        summaries.append(s)
        render_summary(console, s)
    if json_out:
        json_out.write_text(json.dumps(summaries, indent=2) + "\n")


def _load_sets(dirs: tuple[Path, ...] | list[Path]) -> list:
    from stopwise.data import bundled_paths
    from stopwise.traces import read_trace_set

    paths = list(dirs) if dirs else bundled_paths()
    return [read_trace_set(p) for p in paths]


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="stopwise")


if __name__ == "__main__":  # pragma: no cover
    main()
