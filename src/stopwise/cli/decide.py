"""``stopwise abstain``, ``sets``, ``select``, ``aggregate``, ``budget`` and ``route``: the decisions beyond stopping.

Thin commands over :mod:`stopwise.rules`; registered on the group by importing this module (``stopwise.cli.main`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from stopwise.cli.common import (
    _CASCADE_SCORES,
    _delta,
    _eps,
    _load_sets,
    _report_per_set,
    _traces,
    _write_json,
    cli,
    console,
    err_console,
)

@cli.command("abstain")
@_traces
@_eps
@_delta
@click.option("--dual", "dual_score", default=None, type=click.Choice(list(_CASCADE_SCORES)),
              help="Dual-threshold rule on this score: answer alone above t_answer (error <= --epsilon), return every "
                   "candidate answer above t_set (no right candidate in <= --epsilon-set of questions), else abstain.")
@click.option("--epsilon-set", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="--dual: the share of questions whose output has no right candidate.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Rows with the risk-coverage curves.")
def abstain_cmd(traces, epsilon, delta, dual_score, epsilon_set, json_out) -> None:  # noqa: ANN001
    """Selective answering: AUROC of each confidence score, and the certified 'answer only above t' rule."""
    from stopwise.rules.selective import dual_threshold_report, selective_report

    if dual_score:
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"

        _report_per_set(
            traces, f"dual-threshold answering on {dual_score}: single-answer error <= {epsilon}, outputs with no right "
                    f"candidate <= {epsilon_set}, jointly at delta {delta} (Bonferroni: delta/2 each); test half",
            ("trace set", "t_answer", "t_set", "answered alone", "answered with a set", "abstained", "mean set size",
             "single-answer error", "outputs missing the truth"), 1,
            lambda ts: [dual_threshold_report(ts, score=dual_score, epsilon_answer=epsilon, epsilon_set=epsilon_set, delta=delta)],
            lambda r: ("-" if r["t_answer"] is None else f"{r['t_answer']:.3g}", "-" if r["t_set"] is None else f"{r['t_set']:.3g}",
                       pct(r["single_share"]), pct(r["set_share"]), pct(r["abstain_share"]),
                       "-" if r["mean_set_size"] is None else f"{r['mean_set_size']:.2f}", pct(r["single_error"]), pct(r["output_miss"])),
            json_out,
        )
        return
    _report_per_set(
        traces, f"selective answering: error among answered <= {epsilon} at delta {delta} (test half)",
        ("trace set", "score", "AUROC", "certified", "threshold", "coverage", "selective risk", "error if all answered"), 2,
        lambda ts: selective_report(ts, epsilon=epsilon, delta=delta),
        lambda r: (r["score"], "-" if r["auroc"] is None else f"{r['auroc']:.3f}", "yes" if r["certified"] else "no",
                   "-" if r["threshold"] is None else f"{r['threshold']:.3g}", f"{100 * r['coverage']:.1f}%",
                   f"{100 * r['selective_risk']:.1f}%", f"{100 * r['error_all']:.1f}%"),
        json_out,
    )


@cli.command("sets")
@_traces
@click.option("--alpha", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Miscoverage: sets contain the right answer (or 'none of these') with probability >= 1 - alpha.")
@click.option("--score", default="lac", show_default=True, type=click.Choice(["lac", "aps"]))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def sets_cmd(traces, alpha, score, json_out) -> None:  # noqa: ANN001
    """Conformal answer sets over each question's chain answers: calibrate on the hashed half, report the other."""
    from stopwise.rules.conformal import answer_sets

    _report_per_set(
        traces, f"conformal answer sets ({score}, alpha {alpha}): test half",
        ("trace set", "n cal", "n test", "coverage", "mean size", "singletons", "with 'none'", "truth not a candidate",
         "answered (one real answer)", "accuracy when answered"), 1,
        lambda ts: [answer_sets(ts, alpha=alpha, score=score)],
        lambda r: (str(r["n_calibration"]), str(r["n_test"]), f"{r['test_coverage']:.3f}", f"{r['mean_size']:.2f}",
                   f"{100 * r['singleton_share']:.0f}%", f"{100 * r['none_share']:.0f}%", f"{100 * r['truth_not_a_candidate']:.0f}%",
                   f"{100 * r['answered_share']:.0f}%", "-" if r["answered_accuracy"] is None else f"{100 * r['answered_accuracy']:.1f}%"),
        json_out,
        "guarantee: marginal coverage >= 1 - alpha over exchangeable questions; 'none of these' is an element of every candidate list; "
        "the rule answers when the set is one real answer and abstains (or escalates) otherwise",
    )


@cli.command("select")
@_traces
@click.option("--q", "q", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Target false discovery rate among released answers.")
@click.option("--score", default="auto", show_default=True, type=click.Choice(["auto", "vote_share", "probe_agreement"]),
              help="Confidence of a majority answer: its vote share, or its probes' agreement (auto: vote share with several chains).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Rows, with the released question ids.")
def select_cmd(traces, q, score, json_out) -> None:  # noqa: ANN001
    """Conformal selection: which majority answers to release so that FDR <= q (BH on conformal p-values)."""
    from stopwise.rules.conformal import select_answers

    _report_per_set(
        traces, f"conformal selection at FDR q = {q}: test half",
        ("trace set", "n cal", "n test", "released", "released share", "realized FDP", "accuracy of all"), 1,
        lambda ts: [select_answers(ts, q=q, score=score)],
        lambda r: (str(r["n_calibration"]), str(r["n_test"]), str(r["released"]), f"{100 * r['released_share']:.1f}%",
                   f"{r['test_fdp']:.3f}", f"{100 * r['accuracy_all']:.1f}%"),
        json_out,
        "guarantee: FDR <= q in expectation over calibration and test draws (marginal, not per batch)",
    )


@cli.command("aggregate")
@_traces
@click.option("--min-share", default=0.2, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Best-of-Majority: answers given by at least this share of the k chains compete on reward.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def aggregate_cmd(traces, min_share, json_out) -> None:  # noqa: ANN001
    """Which answer to return from k chains: majority, confidence-weighted, reward-weighted, best-of-N, Best-of-Majority."""
    from rich.table import Table

    from stopwise.rules.aggregation import aggregation_report
    from stopwise.errors import ConfigError

    out = []
    for ts in _load_sets(traces):
        try:
            r = aggregation_report(ts, min_share=min_share)
        except ConfigError as exc:
            err_console.print(f"{ts.name}: skipped ({exc})")
            continue
        out.append(r)
        t = Table(title=f"{ts.name}: accuracy of each rule on the first k chains ({r['n_questions']} questions)", title_justify="left")
        t.add_column("rule")
        for k in r["ks"]:
            t.add_column(f"k={k}", justify="right")
        for row in r["rows"]:
            t.add_row(row["rule"], *(f"{100 * a:.1f}%" for a in row["accuracy"]))
        console.print(t)
    if json_out:
        _write_json(json_out, out)


@cli.command("budget")
@_traces
@click.option("--cap", required=True, type=click.FloatRange(0.0, min_open=True), help="Most tokens per question on average (generated + probe).")
@_delta
@click.option("--policy", "policies", multiple=True, help="Only these families (default: every applicable one).")
@click.option("--cost-bound", default=None, type=click.FloatRange(0.0, min_open=True),
              help="The most any question can cost (tokens), known before the data; default: chains per question x the "
                   "set's max_tokens where its probes are free. Without one, nothing is certified.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def budget_cmd(traces, cap, delta, policies, cost_bound, json_out) -> None:  # noqa: ANN001
    """Budget mode: the most accurate policy setting whose mean tokens per question is certified under --cap."""
    from stopwise.rules.budget import budget_report

    def cells(r: dict[str, Any]) -> tuple[str, ...]:
        h, u, e = r.get("hindsight"), r["uncapped_best"], r.get("estimated")

        def fig(x: dict[str, Any] | None) -> str:
            return "-" if x is None else f"{100 * x['accuracy']:.1f}% ({x['mean_cost']:.0f})"

        chosen = None if r["chosen"] is None else {"accuracy": r["accuracy"], "mean_cost": r["mean_cost"]}
        return (f"{r['admissible']}/{r['candidates']}", escape(r["chosen"] or "none admissible"), fig(chosen),
                escape(e["setting"]) if e else "-", fig(e), fig(h), fig(u))

    _report_per_set(
        traces, f"budget mode: mean tokens per question <= {cap:g} (certified at delta {delta}), most accurate on calibration; test half",
        ("trace set", "admissible", "certified choice", "accuracy (tokens)", "plug-in choice (no bound)", "accuracy (tokens)",
         "best in hindsight under cap", "best in hindsight, no cap"), 2,
        lambda ts: [budget_report(ts, cap=cap, delta=delta, families=list(policies) or None, cost_bound=cost_bound)], cells, json_out,
        "admissible: the mean cost is certified under the cap (Hoeffding-Bentkus, Bonferroni over the settings); accuracy is "
        "estimated; the plug-in choice only needs its calibration mean under the cap and may exceed it",
    )


@cli.command("route")
@click.option("--data", "data_path", default=None, type=click.Path(path_type=Path),
              help="Weak/strong responses: RouteLLM's CSV layout (e.g. src/stopwise/data/routing/routellm_gsm8k_responses.csv.gz) "
                   "or GSM8K's example_model_solutions.jsonl (four GPT-3 set-ups; pick two with --weak/--strong).")
@click.option("--weak", default=None, help="--data *.jsonl: the weak set-up (6b_finetuning, 6b_verification, 175b_finetuning, 175b_verification).")
@click.option("--strong", default=None, help="--data *.jsonl: the strong set-up.")
@click.option("--small", "small", default=None, type=click.Path(path_type=Path), help="Trace set of the small model (with --large).")
@click.option("--large", "large", default=None, type=click.Path(path_type=Path), help="Trace set of the large model on the same questions.")
@click.option("--chains", default=None, type=click.IntRange(1), help="Small-model chains per question (default: all logged).")
@click.option("--large-chains", default=None, type=click.IntRange(1), help="Large-model chains per question (default: all logged).")
@click.option("--score", "scores", multiple=True, type=click.Choice(list(_CASCADE_SCORES)),
              help="Small-model confidence scores to certify (default: every one the set feeds).")
@_eps
@_delta
@click.option("--weak-cost", default=None, type=click.FloatRange(0.0),
              help="--data: the weak model's price per question relative to the strong model's (default: 0.1 for RouteLLM "
                   "data, the parameter ratio for GPT-3 set-ups).")
@click.option("--weak-token-price", default=None, type=click.FloatRange(0.0),
              help="--small/--large: a small-model token's price in large-model tokens (default: 0.32, the 0.49B/1.54B "
                   "parameter ratio; 1 when both sets come from one model).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@click.option("--write-policy", "policy_out", type=click.Path(path_type=Path), default=None,
              help="--small/--large: write a policy file serving the certified vote-margin cascade over --chains chains "
                   "(stopwise serve --policy FILE --max-chains K --escalate-to LARGE).")
def route_cmd(data_path, weak, strong, small, large, chains, large_chains, scores, epsilon, delta, weak_cost, weak_token_price, json_out, policy_out) -> None:  # noqa: ANN001
    """Certify a weak-to-strong cascade on accuracy lost against always-strong; report it on held-out questions.

    Either RouteLLM-style response data (--data: a router is trained on a disjoint split) or two trace sets of a
    small and a large model on the same questions (--small/--large: the small model's own confidence decides).
    """
    from stopwise.rules.routing import cascade, load_routing_data

    if (data_path is None) == (small is None or large is None) or (small is None) != (large is None):
        raise click.UsageError("give either --data CSV or both --small DIR and --large DIR")
    if data_path is not None:
        r = cascade(load_routing_data(data_path, weak=weak, strong=strong), epsilon=epsilon, delta=delta, weak_cost=weak_cost)
        console.print(f"{r['data']}: {r['weak']} -> {r['strong']}; router fitted on {r['n_train']} questions "
                      f"(AUROC {r['router_auroc']:.3f} on the test half), threshold calibrated on {r['n_calibration']}")
        if r["certified"]:
            console.print(f"[green]certified[/] keep the weak answer when P(weak right) >= {r['threshold']:g}: {r['guarantee']}")
        else:
            console.print(f"[yellow]{r['decision']}[/] ({r['guarantee']})")
        console.print(f"test half ({r['n_test']} questions): accuracy {100 * r['accuracy_cascade']:.1f}% vs always-strong "
                      f"{100 * r['accuracy_strong']:.1f}% (loss {100 * r['accuracy_loss']:.1f} points), escalated "
                      f"{100 * r['escalated']:.1f}%, cost {r['cost']:.3f} of always-strong (oracle router: escalates "
                      f"{100 * r['oracle_escalated']:.1f}%, cost {r['oracle_cost']:.3f})")
        if json_out:
            _write_json(json_out, r)
        return
    from stopwise.cli.render import render_cascades
    from stopwise.rules.routing import pair_trace_sets, trace_cascade
    from stopwise.traces import read_trace_set

    pair = pair_trace_sets(read_trace_set(small), read_trace_set(large), chains=chains, large_chains=large_chains)
    names = [s for s in (scores or _CASCADE_SCORES) if s in pair.scores]
    if not names:
        raise click.UsageError(f"none of the scores {list(scores)} is available here (available: {sorted(pair.scores)})")
    rows = [trace_cascade(pair, score=s, epsilon=epsilon, delta=delta, weak_token_price=weak_token_price) for s in names]
    render_cascades(console, rows)
    if json_out:
        _write_json(json_out, rows)
    if policy_out:
        from stopwise.rules.routing import cascade_policy

        doc = cascade_policy(read_trace_set(small), read_trace_set(large), chains=chains or pair.chains, epsilon=epsilon, delta=delta,
                             weak_token_price=weak_token_price)
        _write_json(policy_out, doc)
        console.print(f"policy written to {policy_out}: keep the small model's vote when its margin over {doc['cascade']['chains']} "
                      f"chains is >= {doc['threshold']:g}, else escalate; serve it with: stopwise serve --policy {policy_out} "
                      f"--max-chains {doc['cascade']['chains']} --escalate-to <large model>")
