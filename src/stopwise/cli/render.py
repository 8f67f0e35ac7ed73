"""Rich rendering of summaries and tables for the CLI."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stopwise.rules.calibrate import KEEP_FULL


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


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if pct:
        return f"{100 * v:.1f}%"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def render_bench(console: Console, benches: list[Any], *, risk: str, epsilon: float, delta: float) -> None:
    for sb in benches:
        title = (f"{sb.trace_set}: {sb.n_questions} questions ({sb.n_calibration} calibration / {sb.n_test} test), "
                 f"risk {risk} <= {epsilon} at delta {delta}; smallest certifiable epsilon {sb.min_epsilon:.3f}"
                 + (" [TOO SMALL]" if sb.too_small else ""))
        t = Table(title=title, title_justify="left")
        for col in ("policy", "setting", "certified", "test risk", "acc full", "acc policy", "tokens saved", "chains saved", "oracle frac"):
            t.add_column(col, justify="right" if col != "policy" else "left")
        for r in sb.rows:
            # a family whose certified settings all cost more than full compute deploys nothing: "no saving"
            cert = "no saving" if r.decision == KEEP_FULL else _f(r.certified)
            name = f"[bold]{r.policy} *[/]" if r.recommended else r.policy
            t.add_row(name, _f(r.threshold), cert, _f(r.test_risk, True), _f(r.accuracy_full, True),
                      _f(r.accuracy_policy, True), _f(r.tokens_saved, True), _f(r.chains_saved, True), _f(r.oracle_fraction, True))
        console.print(t)
        rec = next((r for r in sb.rows if r.recommended), None)
        if rec is not None:
            console.print("  * recommended (largest saving on the calibration half among certified rows): "
                          + ("no saving: keep full compute" if rec.policy == "full_compute"
                             else f"{rec.policy} at {_f(rec.threshold)}, {_f(rec.calibration_saved, True)} saved on the calibration half"))
        o = sb.oracle
        if o:
            console.print("  epsilon-oracle (hindsight, test half): " + ", ".join(f"{k}-chain stops save {_f(v.get('saved'), True)}" for k, v in o.items()))
        if sb.skipped:
            console.print("  not applicable: " + "; ".join(f"{k} ({v})" for k, v in sb.skipped.items()), style="dim")


def render_replay(console: Console, name: str, policy: str, risk: str, rows: list[dict[str, Any]]) -> None:
    t = Table(title=f"{policy} on {name} (risk: {risk}, all questions)", title_justify="left")
    for col in ("threshold", "risk", "tokens", "probe tokens", "tokens saved", "chains", "abstained"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(_f(r["threshold"]), _f(r["risk"], True), str(r["tokens"]), str(r["probe_tokens"]), _f(r["tokens_saved"], True), str(r["chains"]), str(r["abstained"]))
    console.print(t)


def render_validate(console: Console, rows: list[dict[str, Any]]) -> None:
    t = Table(title="stopwise validate: how often the chosen setting's population risk exceeds epsilon", title_justify="left")
    for col in ("trace set", "policy", "n cal", "draws", "violations", "95% CI", "consistent with delta", "verdict"):
        t.add_column(col, justify="left" if col in ("trace set", "policy") else "right")
    for r in rows:
        v = r.get("verdict", "")
        t.add_row(r["trace_set"], r["policy"], str(r["n_calibration"]), str(r["draws"]), _f(r["violation_frequency"], True),
                  f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}%", _f(r["consistent"]),
                  f"[bold red]{v}[/]" if v in ("FAIL", "control NOT REJECTED") else v)
    console.print(t)


def render_anchors(console: Console, rows: list[dict[str, Any]], *, delta: float) -> None:
    """One table per trace set: methods down, epsilon across; cells are test-half savings (and risk)."""
    by_set: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_set.setdefault(r["trace_set"], []).append(r)
    for name, rs in by_set.items():
        eps = sorted({r["epsilon"] for r in rs})
        seeds = max(r.get("seeds", 1) for r in rs)
        t = Table(title=f"{name}: tokens saved on the test half at risk <= epsilon (disagreement, delta {delta}"
                        + (f", mean of {seeds} chain orders" if seeds > 1 else "") + ")", title_justify="left")
        t.add_column("method")
        t.add_column("kind")
        for e in eps:
            t.add_column(f"eps {e:g}", justify="right")
        methods = list(dict.fromkeys(r["method"] for r in rs))
        cell = {(r["method"], r["epsilon"]): r for r in rs}
        for m in methods:
            first = next(r for r in rs if r["method"] == m)
            vals = []
            for e in eps:
                r = cell.get((m, e))
                if r is None:
                    vals.append("")
                elif r["tokens_saved"] is None:
                    vals.append("[dim]too small[/]")
                else:
                    mark = "" if r["kind"] != "stopwise" or r["certified"] else " [yellow]uncert.[/]"
                    sd = f"±{100 * r['tokens_saved_sd']:.1f}" if r.get("tokens_saved_sd") else ""
                    vals.append(f"{100 * r['tokens_saved']:.1f}%{sd} [dim]({r['test_risk']:.3f})[/]{mark}")
            style = "bold" if first.get("headline") else ("dim" if first["kind"] == "oracle" else None)
            t.add_row(escape(m), first["kind"], *vals, style=style)
        console.print(t)


def render_cascades(console: Console, rows: list[dict[str, Any]]) -> None:
    """Certified small-to-large cascades, one row per confidence score, on the test half."""
    if not rows:
        return
    r0 = rows[0]
    t = Table(title=f"cascade {escape(r0['data'])}: {r0['guarantee']} (test half, {r0['n_test']} questions; "
                    f"cost in {r0['cost_unit']})", title_justify="left")
    for col in ("score", "chains", "certified", "threshold", "AUROC", "accuracy", f"always-{r0['strong']}",
                "escalated", "tokens small", "tokens large", "cost", "cost always-large", "oracle escalated", "oracle cost"):
        t.add_column(col, justify="left" if col == "score" else "right")
    for r in rows:
        t.add_row(r["score"], str(r["chains"]), "yes" if r["certified"] else escape(r.get("decision", "no")),
                  "-" if r["threshold"] is None else f"{r['threshold']:g}",
                  "-" if r["router_auroc"] is None else f"{r['router_auroc']:.3f}", _pct(r["accuracy_cascade"]),
                  _pct(r["accuracy_strong"]), _pct(r["escalated"]), "-" if r["threshold"] is None else f"{r['tokens_weak']:.0f}",
                  f"{r['tokens_cascade_strong']:.0f}", f"{r['cost']:.0f}", f"{r['cost_strong']:.0f}",
                  _pct(r["oracle_escalated"]), f"{r['oracle_cost']:.0f}")
    console.print(t)


def render_validate_marginal(console: Console, rows: list[dict[str, Any]]) -> None:
    """Expectation guarantees (answer-set coverage, selection FDR): the mean over draws with a 99% bound, and the control."""
    t = Table(title="stopwise validate: guarantees in expectation (mean over calibration draws, 99% bound)", title_justify="left")
    for col in ("trace set", "check", "draws", "mean", "99% bound", "consistent", "control", "control consistent", "verdict"):
        t.add_column(col, justify="left" if col in ("trace set", "check") else "right")
    for r in rows:
        if "mean_coverage" in r:
            mean, bound, control = r["mean_coverage"], r["coverage_ci_high"], r["control_top1_coverage"]
        else:
            mean, bound, control = r["fdr"], r["fdr_ci_low"], r["control_fdr"]
        t.add_row(r["trace_set"], r["check"], str(r["draws"]), f"{mean:.3f}", f"{bound:.3f}", _f(r["consistent"]),
                  f"{control:.3f}", _f(r["control_consistent"]), r.get("verdict", ""))
    console.print(t)
    console.print("controls: answer sets against the majority answer alone (no calibration); selection against releasing every answer")


def render_decisions(console: Console, rows: list[dict[str, Any]], *, epsilon: float, delta: float, alpha: float, q: float) -> None:
    """The decision rows of ``stopwise bench``: one line each, its headline figure in words."""
    if not rows:
        return
    t = Table(title=f"decisions on the test half: abstention and cascades at epsilon {epsilon} (delta {delta}), "
                    f"answer sets at alpha {alpha}, selection at FDR {q}", title_justify="left")
    for col in ("kind", "data", "method", "certified", "result", "oracle / reference"):
        t.add_column(col, justify="left")
    for r in rows:
        k = r["kind"]
        if k == "abstention" and not r["certified"]:
            res = escape(r["decision"]) + (f" (AUROC {r['auroc']:.3f})" if r["auroc"] is not None else "")
            ref = f"error if all answered {_pct(r['error_all'])}"
        elif k == "abstention":
            res = (f"coverage {_pct(r['coverage'])} at error {_pct(r['selective_risk'])}"
                   + (f", AUROC {r['auroc']:.3f}" if r["auroc"] is not None else ""))
            ref = f"error if all answered {_pct(r['error_all'])}"
        elif k == "answer_sets":
            res = (f"coverage {r['coverage']:.3f}, mean size {r['mean_size']:.2f}; answers alone {_pct(r['answered_share'])}"
                   + ("" if r.get("answered_accuracy") is None else f" at {_pct(r['answered_accuracy'])} accuracy"))
            ref = f"'none of these' in {_pct(r['none_share'])}"
        elif k == "selection":
            res = "release nothing" if not r["released_share"] else f"released {_pct(r['released_share'])}, FDP {r['fdp']:.3f}"
            ref = f"accuracy of all {_pct(r['accuracy_all'])}"
        elif not r["certified"]:
            res = escape(r["decision"])
            ref = f"oracle: escalates {_pct(r['oracle_escalated'])}, cost {r['oracle_cost'] / r['cost_strong']:.2f}"
        else:
            res = (f"accuracy {_pct(r['accuracy_cascade'])} vs large {_pct(r['accuracy_strong'])}, escalated {_pct(r['escalated'])}, "
                   f"cost {r['cost'] / r['cost_strong']:.2f} of always-large")
            ref = f"oracle: escalates {_pct(r['oracle_escalated'])}, cost {r['oracle_cost'] / r['cost_strong']:.2f}"
        t.add_row(k, escape(r["data"]), escape(r["method"]), "yes" if r["certified"] else "no", res, ref)
    console.print(t)
