"""Bench rows for the decisions beyond stopping: abstention, answer sets, selection and cascades.

``stopwise bench`` reports, next to the stopping rules, one row per certified
decision rule on each set's test half (the hashed split, as everywhere):

``abstention``   each confidence score's certified "answer only above t" rule:
                 coverage at selective risk <= epsilon (Learn-then-Test), AUROC;
``answer_sets``  conformal sets (LAC) at miscoverage alpha: coverage and mean size;
``selection``    conformal selection at FDR q: the share of answers released;
``cascade``      small-to-large (two bundled trace sets on the same questions) and
                 weak-to-strong (the bundled RouteLLM responses): share escalated
                 and cost at certified accuracy loss <= epsilon, beside the oracle
                 router that escalates exactly where only the large model is right.

Rows that a reader compares and picks from pay for the pick: the abstention
scores of a set are certified at ``delta / K`` (K scores), and the cascade rules
of a pair at ``delta / K`` (K = chain counts times scores); the answer-set and
selection rows are one declared rule each. :func:`plot_decisions` draws the
risk-coverage and cost-accuracy curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stopwise.errors import ConfigError

__all__ = ["decision_rows", "plot_decisions"]


def _abstention(ts, epsilon: float, delta: float) -> list[dict[str, Any]]:  # noqa: ANN001 - TraceSet
    from stopwise.rules.selective import selective_report

    return [{
        "kind": "abstention", "data": ts.name, "method": r["score"], "certified": r["certified"], "threshold": r["threshold"],
        "decision": r["decision"], "calibration_coverage": r["calibration_coverage"],
        "guarantee": f"error among answered <= {epsilon} with probability >= {1 - delta} (LTT, selective risk)",
        "n_calibration": r["n_calibration"], "n_test": r["n_test"], "coverage": r["coverage"],
        "selective_risk": r["selective_risk"], "error_all": r["error_all"], "auroc": r["auroc"], "curve": r["full_curve"],
    } for r in selective_report(ts, epsilon=epsilon, delta=delta)]


def _sets_and_selection(ts, alpha: float, q: float) -> list[dict[str, Any]]:  # noqa: ANN001
    from stopwise.rules.conformal import answer_sets, select_answers

    s = answer_sets(ts, alpha=alpha, score="lac")
    sel = select_answers(ts, q=q)
    return [
        {"kind": "answer_sets", "data": ts.name, "method": "lac", "certified": True, "threshold": s.get("qhat"),
         "guarantee": f"marginal coverage >= {1 - alpha:g} over exchangeable questions (split conformal); 'none of these' is an element",
         "n_calibration": s["n_calibration"], "n_test": s["n_test"], "coverage": s["test_coverage"],
         "mean_size": s["mean_size"], "singleton_share": s["singleton_share"], "none_share": s["none_share"],
         "answered_share": s["answered_share"], "answered_accuracy": s["answered_accuracy"]},
        {"kind": "selection", "data": ts.name, "method": sel["score"], "certified": True, "threshold": None,
         "guarantee": f"FDR <= {q:g} among released answers, in expectation (conformal p-values + BH; marginal)",
         "decision": "release nothing" if not sel["released_share"] else f"release {sel['released_share']:.1%} of answers",
         "n_calibration": sel["n_calibration"], "n_test": sel["n_test"], "released_share": sel["released_share"],
         "fdp": sel["test_fdp"], "accuracy_all": sel["accuracy_all"]},
    ]


def _cascade_row(r: dict[str, Any], method: str) -> dict[str, Any]:
    keep = ("certified", "threshold", "decision", "guarantee", "n_calibration", "n_test", "accuracy_cascade", "accuracy_strong",
            "accuracy_weak", "accuracy_loss", "escalated", "cost", "cost_strong", "cost_weak", "oracle_escalated", "accuracy_oracle",
            "oracle_cost", "router_auroc", "cost_unit", "curve")
    return {"kind": "cascade", "data": r["data"], "method": method, **{k: r[k] for k in keep},
            **{k: r[k] for k in ("chains", "tokens_weak", "tokens_strong", "tokens_cascade_strong") if k in r}}


def decision_rows(
    sets: Sequence[Any],
    *,
    epsilon: float = 0.05,
    delta: float = 0.1,
    alpha: float = 0.1,
    q: float = 0.1,
    cascade_pairs: Sequence[tuple[Any, Any]] = (),
    routing_paths: Sequence[Path] = (),
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Every decision row for ``sets`` (those with labels), the trace-set cascade pairs and the routing data files."""
    from stopwise.rules.routing import cascade, is_direct, load_routing_data, pair_trace_sets, trace_cascade
    from stopwise.stats.ltt import check_level

    for value, name in ((epsilon, "epsilon"), (delta, "delta"), (alpha, "alpha"), (q, "q")):
        check_level(value, name)
    rows: list[dict[str, Any]] = []
    for ts in sets:
        if not ts.has("correct"):
            continue
        if progress:
            progress(f"decisions: {ts.name}")
        try:
            rows += _abstention(ts, epsilon, delta)
            rows += _sets_and_selection(ts, alpha, q)
        except ConfigError:
            continue
    for small, large in cascade_pairs:
        if progress:
            progress(f"cascade: {small.name} -> {large.name}")
        # a direct-answer set against its own model reasoning is a think-or-not gate: against one reasoning chain
        direct = is_direct(small)
        # every (chain count, score) rule of the pair is a row a reader compares and picks from: declare them all
        # first, then certify each at delta / K (Bonferroni over the pair's rules)
        rules = []
        for chains in sorted({1, min(2, int(small.chain_counts.max())), int(small.chain_counts.max())}):
            pair = pair_trace_sets(small, large, chains=chains, large_chains=1 if direct else None)
            for score in ("vote_margin", "probe_confidence", "probe_agreement") if chains > 1 else (
                    "answer_probability", "probe_confidence", "probe_agreement"):
                if score in pair.scores:
                    rules.append((pair, score, chains))
        for pair, score, chains in rules:
            rows.append(_cascade_row(trace_cascade(pair, score=score, epsilon=epsilon, delta=delta, k_policies=len(rules)),
                                     f"{score}, {chains} chains"))
    for path in routing_paths:
        if progress:
            progress(f"cascade: {Path(path).name}")
        r = cascade(load_routing_data(path), epsilon=epsilon, delta=delta)
        rows.append(_cascade_row(r, f"router (TF-IDF + response features, trained on {r['n_train']} questions)"))
    return rows


def _save(plt: Any, fig: Any, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_decisions(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Risk-coverage curves (abstention, one panel per set) and cost-accuracy curves (cascades, one panel per pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    written = []
    abst = [r for r in rows if r["kind"] == "abstention"]
    names = sorted({r["data"] for r in abst})
    if names:
        cols = min(4, len(names))
        nrows = (len(names) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            for r in (x for x in abst if x["data"] == name):
                cov, risk = np.asarray(r["curve"]["coverage"]), np.asarray(r["curve"]["risk"])
                line, = ax.plot(cov, risk, marker=".", label=f"{r['method']} (AUROC {r['auroc']:.2f})" if r["auroc"] is not None else r["method"])
                if r["certified"]:
                    ax.plot([r["coverage"]], [r["selective_risk"]], marker="*", markersize=12, color=line.get_color())
            ax.set_title(name, fontsize=9)
            ax.set_ylim(bottom=0)
            ax.set_xlim(0, 1.02)
            ax.set_xlabel("coverage (share answered)")
            ax.set_ylabel("error among answered")
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        written.append(_save(plt, fig, out / "risk_coverage.png", "risk-coverage on the test half (star: the certified threshold)"))
    casc = [r for r in rows if r["kind"] == "cascade"]
    groups = sorted({r["data"] for r in casc})
    if groups:
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
        for ax, name in zip(axes.flat, groups):
            rs = [x for x in casc if x["data"] == name]
            strong = rs[0]["cost_strong"]
            for r in rs:
                cost = np.asarray(r["curve"]["cost"]) / strong
                line, = ax.plot(cost, r["curve"]["accuracy"], marker=".", markersize=3, label=r["method"][:48])
                if r["certified"]:
                    ax.plot([r["cost"] / strong], [r["accuracy_cascade"]], marker="*", markersize=12, color=line.get_color())
            r0 = rs[0]
            ax.axhline(r0["accuracy_strong"], color="k", linestyle="--", linewidth=0.8, label="always large")
            ax.plot([r0["oracle_cost"] / strong], [r0["accuracy_oracle"]], marker="D", color="k", linestyle="none",
                    label="oracle router")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel(f"cost / always-large cost ({r0['cost_unit']})", fontsize=7)
            ax.set_ylabel("accuracy (test half)")
            ax.legend(fontsize=6)
        written.append(_save(plt, fig, out / "cost_accuracy.png", "cascades: cost-accuracy over the threshold grid (star: certified threshold)"))
    return written
