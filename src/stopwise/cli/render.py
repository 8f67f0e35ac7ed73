"""Rich rendering of summaries and tables for the CLI."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def render_summary(console: Console, s: dict[str, Any]) -> None:
    t = Table(title=f"{s['name']}  ({s['content_hash'][:12]})", show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value")
    prov = s.get("provenance", {})
    t.add_row("source", str(prov.get("source", "?")))
    t.add_row("questions / chains", f"{s['questions']} / {s['chains']}  (chains per question {s['chains_per_question']['min']:.0f}-{s['chains_per_question']['max']:.0f})")
    tp = s["tokens_per_chain"]
    t.add_row("tokens", f"{s['tokens']:,}  (per chain: mean {tp['mean']:.0f}, median {tp['median']:.0f}, max {tp['max']:.0f})")
    t.add_row("fields", ", ".join(f for f in s["fields"] if f not in ("question_id", "sample_id", "n_tokens")))
    if "probes_per_chain" in s:
        pp = s["probes_per_chain"]
        t.add_row("probes per chain", f"mean {pp['mean']:.1f}, median {pp['median']:.0f}  ({_pct(s.get('probes_with_answer'))} carry an answer)")
    if "first_candidate_position" in s:
        fp, fs = s["first_candidate_position"], s["first_candidate_share"]
        t.add_row(
            "first candidate answer",
            f"median token {fp['median']:.0f} = {_pct(fs['median'])} of the chain (mean {_pct(fs['mean'])}); "
            f"{_pct(s.get('chains_with_candidate'))} of chains state one",
        )
    t.add_row("chains with an answer", _pct(s.get("chains_with_answer")))
    if "accuracy_one_chain" in s:
        t.add_row("accuracy", f"one chain {_pct(s['accuracy_one_chain'])}, majority vote {_pct(s['accuracy_majority_vote'])}")
    fam = s.get("families", {})
    yes = [k for k, v in fam.items() if v == "yes"]
    no = [f"{k} ({v})" for k, v in fam.items() if v != "yes"]
    t.add_row("policy families", ", ".join(yes) or "-")
    if no:
        t.add_row("not supported", "; ".join(no))
    if prov.get("tokenizer"):
        t.add_row("tokenizer", prov["tokenizer"])
    console.print(t)
