"""``stopwise``: collect, import, inspect, replay, calibrate, validate, bench and serve.

Every command is a thin layer over the library. Any :class:`StopwiseError`
becomes one line on stderr and exit status 2. The decision commands (abstain,
sets, select, aggregate, budget, route) live in :mod:`stopwise.cli.decide`.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from stopwise.cli import decide  # noqa: F401  (registers the decision commands on the group)
from stopwise.cli.common import (
    _CASCADE_SCORES,
    _command_line,
    _delta,
    _eps,
    _load_sets,
    _risk,
    _seed,
    _traces,
    _write_json,
    cli,
    console,
    err_console,
)

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

    if out.exists() and not overwrite:  # fail before the (slow) import, not only at write time
        raise TraceSetError(f"output directory '{out}' already exists", hint="choose another --out or pass --overwrite")
    with console.status(f"importing {len(paths)} file(s)..."):
        ts = import_traces(list(paths), name=name or out.name, fmt=fmt, tokenizer=tokenizer, mapping=mapping, command=_command_line())
        write_trace_set(ts, out, overwrite=overwrite)
    console.print(
        f"wrote [bold]{out}[/]: {ts.n_questions} questions, {ts.n_chains} chains, {ts.n_tokens} tokens, "
        f"hash {ts.content_hash[:12]}"
    )


@cli.command("collect")
@click.option("--dataset", default=None, help="gsm8k | math500 | aime24 | reasoning-gym:TASK[?key=value&...] | jsonl:PATH (required unless --assemble-partial)")
@click.option("--model", default="embedded", show_default=True, help="embedded (Qwen2.5-Coder-0.5B) | embedded-1.5b | smollm2 | a GGUF path.")
@click.option("--questions", default=600, show_default=True, type=click.IntRange(1))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0), help="Skip this many questions first.")
@click.option("--chains", default=4, show_default=True, type=click.IntRange(1), help="Chains per question.")
@click.option("--chains-first", default=None, help="M:K: the first M questions get K chains (e.g. 64:16).")
@click.option("--max-tokens", default=384, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.7, show_default=True, type=click.FloatRange(0))
@click.option("--top-p", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--probe-every", default=32, show_default=True, type=click.IntRange(0), help="Probe every P tokens (0: only at cues).")
@click.option("--no-cue-probes", is_flag=True, help="Do not probe at cue tokens (blank lines, Wait, Hmm, ...).")
@click.option("--forcing", default=None, help="Forcing string appended for probes (default: blank line + 'Final answer: $\\boxed{').")
@click.option("--direct", is_flag=True, help="No chain of thought: start the answer with the forcing string and let the "
              "model write only the answer (use a small --max-tokens and --temperature 0; the think-or-not gate's direct probe).")
@click.option("--upstream-api", "api", default="completions", show_default=True, type=click.Choice(["completions", "chat"]),
              help="An HTTP model: completions (probes force answers) or chat (a chat-only API: probes read from the text at cues, as the bundled R1/QwQ sets).")
@click.option("--profile", default=None, help="The model's reasoning profile (deepseek-r1, qwq, qwen3, gpt-oss, gemma-thinking, generic) or a TOML file; default: detected.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(0, 5), help="Top logprobs kept per position.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--size", "dataset_size", default=500, show_default=True, type=click.IntRange(1), help="Questions generated for reasoning-gym datasets.")
@click.option("--batch", "batch_chains", default=8, show_default=True, type=click.IntRange(1), help="Chains decoded together.")
@click.option("--threads", "n_threads", default=None, type=click.IntRange(1))
@click.option("--flush-every", default=32, show_default=True, type=click.IntRange(1), help="Write a durable chunk after this many finished chains (and at least every 60 s).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Trace-set directory (working state in OUT.collect).")
@click.option("--assemble-partial", is_flag=True, help="Do not collect: write the questions completed so far as a trace set.")
@click.option("--compact", is_flag=True, help="Do not collect: merge the working state's small chunk files (one every 32 chains or 60 s) "
              "into one, losslessly; for keeping a long collection's state in version control between machines. Not while it runs.")
@click.option("--seed-from", default=None, type=click.Path(exists=True, path_type=Path), help="A set assembled from an earlier collection with the same settings: its chains count as done.")
@click.option("--round-floats", default=None, type=click.IntRange(1, 22), metavar="BITS",
              help="Store the written set's float32 columns (logprobs, entropies, confidences) rounded to BITS mantissa bits (7: bfloat16's precision, "
              "10: float16's), as float32, recorded in the manifest; smaller files. Default: lossless. The working state keeps full precision.")
def collect_cmd(out: Path, assemble_partial: bool, compact: bool, seed_from: Path | None, round_floats: int | None, chains_first: str | None,
                forcing: str | None, no_cue_probes: bool, **kw: Any) -> None:
    """Collect a trace set (chains, logprobs, probes) from a model; resumable."""
    from stopwise.collect import CollectConfig, assemble, check_assemble_settings, compact_chunks
    from stopwise.errors import ConfigError

    cf = _chains_first(chains_first, kw["chains"]) if chains_first is not None else None
    if assemble_partial or compact:
        # settings given beside it must agree with the collection's (a collect command with the flag added)
        flag = "--assemble-partial" if assemble_partial else "--compact"
        ctx = click.get_current_context()
        given_on = {n for n in ctx.params if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)}
        if assemble_partial and compact:
            raise ConfigError("--compact and --assemble-partial are two separate steps", hint="run them one after the other")
        if "seed_from" in given_on:
            raise ConfigError(f"--seed-from seeds a collection; {flag} does not collect",
                              hint=f"drop --seed-from, or drop {flag} to collect")
        if compact and "round_floats" in given_on:
            raise ConfigError("--round-floats rounds a written set; --compact keeps the working state at full precision",
                              hint="drop --round-floats")
        fields = {**kw, "chains_first": cf, "forcing": forcing, "cue_probes": not no_cue_probes}
        given = {f: fields[f] for f in ({"no_cue_probes": "cue_probes"}.get(n, n) for n in given_on) if f in fields}
        check_assemble_settings(out, given)
        if compact:
            files, chains, path = compact_chunks(out)
            console.print(f"merged {files} chunk files ({chains} chains) into {path}" if files else
                          f"nothing to compact in {out}.collect (no chunk written since the last compaction)")
            return
        path = assemble(out, complete_only=True, assembled_by=_command_line(), round_floats=round_floats)
        console.print(f"wrote {path} (completed questions only)")
        return
    if kw.get("dataset") is None:
        raise ConfigError("--dataset is required", hint="e.g. --dataset gsm8k")
    if forcing is not None and not forcing.strip():
        raise ConfigError("--forcing is empty: a probe would ask nothing", hint="e.g. --forcing 'Final answer: '")
    if forcing is None and kw.get("profile"):
        from stopwise.backends.profiles import detect_profile

        forcing = detect_profile(None, override=kw["profile"]).forcing("math")  # the profile's own answer forcing
    extra = {"forcing": forcing} if forcing is not None else {}
    cfg = CollectConfig(chains_first=cf, cue_probes=not no_cue_probes, **extra, **kw)
    # Ctrl-C or `kill PID` stops cleanly: the finished chains in memory are flushed first
    # (SIGINT is set explicitly: a shell starts background jobs with it ignored)
    import signal

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _collect_with_progress(cfg, out, seed_from, round_floats)
    except KeyboardInterrupt:
        err_console.print(f"stopped; the finished chains are kept in {out}.collect: run the same command to continue")
        raise SystemExit(130) from None
    finally:  # a caller that runs the CLI in-process gets its own handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _chains_first(spec: str, chains: int) -> tuple[int, int]:
    """``--chains-first M:K`` checked: the first M questions get K > ``chains`` chains."""
    from stopwise.errors import ConfigError

    try:
        m, k = (int(x) for x in spec.split(":"))
    except ValueError as exc:
        raise ConfigError(f"--chains-first '{spec}' is not M:K", hint="e.g. --chains-first 64:16") from exc
    if m < 1 or k <= chains:
        raise ConfigError(f"--chains-first {spec}: needs M >= 1 questions and K > --chains ({chains}) chains",
                          hint=f"e.g. --chains-first 64:{max(16, chains + 1)}")
    return (m, k)


def _collect_with_progress(cfg: Any, out: Path, seed_from: Path | None, round_floats: int | None = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from stopwise.collect import collect

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("chains · {task.fields[q]} questions · {task.fields[tps]:.1f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    # the bar starts with the first progress report, so that an input error is printed alone
    bar = Progress(*columns, console=err_console, transient=False)
    task = bar.add_task("collect", total=None, q="0/?", tps=0.0)
    last = [0.0]
    try:

        def progress(d: dict[str, Any]) -> None:
            if not bar.live.is_started:
                bar.start()
            bar.update(task, completed=d["chains_done"], total=d["chains_total"], q=f"{d['questions_done']}/{d['questions_total']}", tps=d["tokens_per_s"])
            if not err_console.is_terminal and time.monotonic() - last[0] > 60:
                # a log file gets a plain line a minute instead of a live bar
                last[0] = time.monotonic()
                err_console.print(f"chains {d['chains_done']}/{d['chains_total']} · questions {d['questions_done']}/{d['questions_total']} · {d['tokens_per_s']:.1f} tok/s")

        path = collect(cfg, out, progress=progress, command=_command_line(), seed_from=seed_from, round_floats=round_floats)
    finally:
        if bar.live.is_started:
            bar.stop()
    console.print(f"wrote {path}")


@cli.command("serve")
@click.option("--backend", default=None, help="embedded | embedded-1.5b | smollm2 | a GGUF path | an OpenAI-compatible URL (default: embedded).")
@click.option("--policy", "policies", multiple=True, type=click.Path(path_type=Path), help="A calibrated policy file (repeatable). None: requests pass through unchanged.")
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1; any other needs --api-key).")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port (default 8000).")
@click.option("--api-key", default=None, help="Bearer key clients must send.")
@click.option("--uncertified", default=None, type=click.Choice(["refuse", "mark"]), help="A request outside a policy's certified conditions: refuse it (400) or serve it marked uncertified.")
@click.option("--escalate-to", default=None, help="A second backend (URL | embedded-1.5b | GGUF path) that answers, at full compute, the questions the policy abstains on or escalates: a cascade.")
@click.option("--upstream-api", default=None, type=click.Choice(["completions", "chat"]),
              help="How an HTTP upstream is spoken to: completions (default) or chat (chat-only APIs: hosted, Ollama, vLLM/SGLang with a reasoning parser).")
@click.option("--continuation/--no-continuation", default=None, help="The chat upstream continues a final assistant message (vLLM/SGLang continue_final_message).")
@click.option("--profile", default=None, help="The model's reasoning profile (deepseek-r1, qwq, qwen3, gpt-oss, gemma-thinking, generic) or a TOML file; default: detected.")
@click.option("--reasoning-format", default=None, type=click.Choice(["separate", "inline"]), help="Thinking in reasoning_content (separate, default) or inline in content.")
@click.option("--max-tokens-limit", default=None, type=click.IntRange(1), help="Largest max_tokens a request may ask (default 4096).")
@click.option("--max-chains", default=None, type=click.IntRange(1, 64))
@click.option("--max-concurrent", default=None, type=click.IntRange(1))
@click.option("--config", "config_file", default=None, type=click.Path(exists=True, path_type=Path), help="Settings as JSON (flags and STOPWISE_* variables override it).")
def serve_cmd(config_file: Path | None, policies: tuple[Path, ...], **flags: Any) -> None:
    """Serve an OpenAI-compatible API that applies calibrated policies live."""
    import logging

    from stopwise.errors import MissingExtraError
    from stopwise.server.app import create_app
    from stopwise.server.settings import ServeSettings

    base = json.loads(config_file.read_text()) if config_file else {}
    given = {k: v for k, v in flags.items() if v is not None}
    if policies:
        given["policies"] = [str(p) for p in policies]
    settings = ServeSettings(**{**base, **given})
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingExtraError("stopwise serve", "serve", "uvicorn") from exc
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # httpx logs every upstream request (probes included) at INFO: noise in the server's log, and a
    # measurable share of the proxy's CPU per request
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")


@cli.command("inspect")
@click.argument("dirs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the summaries as JSON.")
def inspect_cmd(dirs: tuple[Path, ...], json_out: Path | None) -> None:
    """Summarize trace sets (default: every bundled set)."""
    from stopwise.cli.render import render_summary
    from stopwise.evaluation.report.inspect import summarize

    sets = _load_sets(dirs)
    summaries = []
    for ts in sets:
        s = summarize(ts)
        summaries.append(s)
        render_summary(console, s)
    if json_out:
        json_out.write_text(json.dumps(summaries, indent=2) + "\n")


@cli.command("bench")
@_traces
@_risk
@_eps
@_delta
@_seed
@click.option("--policy", "policies", multiple=True, help="Only these families (repeatable; default: all).")
@click.option("--chain-mode", default="mean", show_default=True, type=click.Choice(["mean", "draw"]), help="Single-chain families on multi-chain sets: a question's loss is the mean over its chains (Hoeffding-Bentkus) or one chain drawn per question (binomial).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the rows as JSON.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path), default=None, help="Write an HTML report with Pareto plots here.")
@click.option("--alpha", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Miscoverage of the conformal answer-set rows.")
@click.option("--q", "q", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Target FDR of the conformal selection rows.")
@click.option("--decisions/--no-decisions", default=True, show_default=True,
              help="Also report abstention, answer sets, selection and cascades (cascades: on the bundled pairs and "
                   "routing data when no --traces is given).")
@click.option("--compare", type=click.Choice(["anchors"]), default=None,
              help="anchors: the published rules over their own grids (best in hindsight, and certified) against stopwise's "
                   "certified policies and the oracle, at epsilon 0.01/0.02/0.05/0.1 (see benchmarks/anchors.py).")
def bench_cmd(traces, risk, epsilon, delta, seed, policies, chain_mode, json_out, report_dir, alpha, q, decisions, compare) -> None:  # noqa: ANN001
    """Calibrate every applicable policy family per set and report certified savings on held-out questions."""
    from rich.progress import Progress

    if compare == "anchors":
        from stopwise.evaluation.anchors import compare_sets, summarize
        from stopwise.cli.render import render_anchors

        sets = _load_sets(traces)
        pool = _load_sets([]) if traces else []  # the bundled sets can always donate to the transfer probe
        with Progress(console=err_console, transient=True) as progress:
            task = progress.add_task("anchors", total=None)
            results = compare_sets(sets, delta=delta, donor_pool=pool, progress=lambda msg: progress.update(task, description=msg))
        rows = summarize(results)
        render_anchors(console, rows, delta=delta)
        if json_out:
            _write_json(json_out, [r for res in results for r in res["rows"]])
            console.print(f"rows written to {json_out}")
        return

    from stopwise.evaluation.bench import bench_set
    from stopwise.cli.render import render_bench

    sets = _load_sets(traces)
    benches = []
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("bench", total=len(sets))
        for ts in sets:
            sb = bench_set(ts, families=policies or None, risk=risk, epsilon=epsilon, delta=delta, seed=seed, chain_mode=chain_mode,
                           progress=lambda msg: progress.update(task, description=msg))
            benches.append(sb)
            progress.advance(task)
    render_bench(console, benches, risk=risk, epsilon=epsilon, delta=delta)
    drows: list[dict[str, Any]] = []
    if decisions:
        drows = _bench_decisions(sets, bundled=not traces, epsilon=epsilon, delta=delta, alpha=alpha, q=q)
    if json_out:
        _write_json(json_out, [r.to_dict() for sb in benches for r in sb.rows])
        console.print(f"rows written to {json_out}")
        if drows:
            dpath = json_out.with_name(json_out.stem + "_decisions.json")
            _write_json(dpath, drows)
            console.print(f"decision rows written to {dpath}")
    if report_dir:
        from stopwise.evaluation.report.html import write_report

        images = []
        if drows:
            from stopwise.evaluation.decisions import plot_decisions

            images = plot_decisions(drows, report_dir)
        path = write_report(benches, report_dir, decisions=drows, images=[p.name for p in images])
        console.print(f"report written to {path}")


def _bench_decisions(sets: list, *, bundled: bool, epsilon: float, delta: float, alpha: float, q: float) -> list[dict[str, Any]]:
    from rich.progress import Progress

    from stopwise.cli.render import render_decisions
    from stopwise.data import bundled_cascade_pairs, bundled_routing_paths
    from stopwise.evaluation.decisions import decision_rows
    from stopwise.traces import read_trace_set

    by_name = {ts.name: ts for ts in sets}
    pairs = []
    if bundled:
        for s, lg in bundled_cascade_pairs():
            pairs.append((by_name.get(s.name) or read_trace_set(s), by_name.get(lg.name) or read_trace_set(lg)))
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("decisions", total=None)
        rows = decision_rows(sets, epsilon=epsilon, delta=delta, alpha=alpha, q=q, cascade_pairs=pairs,
                             routing_paths=bundled_routing_paths() if bundled else [],
                             progress=lambda msg: progress.update(task, description=msg))
    render_decisions(console, rows, epsilon=epsilon, delta=delta, alpha=alpha, q=q)
    return rows


_settings_from = click.option(
    "--settings-from", "settings_from", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
    help="Take the family's settings from this policy file (e.g. a trained learned_exit model, to reuse it on another set).",
)


def _prepared_family(policy: str, ts, settings_from: Path | None):  # noqa: ANN001, ANN202
    """The family ``policy`` fitted and trained for ``ts`` (settings from a policy file if given); refuses unsupported sets."""
    from stopwise.errors import ConfigError, UnsupportedError
    from stopwise.policies.registry import prepare_family

    settings: dict = {}
    if settings_from is not None:
        try:
            doc = json.loads(settings_from.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{settings_from}: not a readable policy file: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != "stopwise-policy":
            raise ConfigError(f"{settings_from}: not a stopwise policy file (no \"format\": \"stopwise-policy\")")
        if doc.get("family") != policy:
            raise ConfigError(f"{settings_from}: written for family '{doc.get('family')}', not '{policy}'",
                              hint=f"pass --policy {doc.get('family')}")
        settings = dict(doc.get("settings") or {})
    fam = prepare_family(policy, ts, **settings)
    why = fam.supports(ts)
    if why:
        raise UnsupportedError(f"policy '{policy}' cannot run on '{ts.name}': {why}")
    return fam


@cli.command("replay")
@click.option("--traces", required=True, type=click.Path(path_type=Path))
@click.option("--policy", "policy", required=True, help="Policy family name.")
@_risk
@_settings_from
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def replay_cmd(traces, policy, risk, settings_from, json_out) -> None:  # noqa: ANN001
    """Replay one family over a trace set: risk, tokens and chains at every grid point."""
    from stopwise.rules.calibrate import question_losses
    from stopwise.policies.base import unit_losses
    from stopwise.cli.render import render_replay
    from stopwise.traces import read_trace_set

    ts = read_trace_set(traces)
    fam = _prepared_family(policy, ts, settings_from)
    res = fam.replay(ts)
    q_loss, _, _ = question_losses(res, unit_losses(res, risk), ts.n_questions)
    rows = []
    for j, g in enumerate(res.grid):
        rows.append({
            "threshold": float(g), "risk": float(q_loss[:, j].mean()),
            "tokens": int(res.tokens[:, j].sum()), "probe_tokens": int(res.probe_tokens[:, j].sum()),
            "tokens_saved": float(1 - res.cost[:, j].sum() / max(res.cost_full.sum(), 1)),
            "chains": int(res.chains[:, j].sum()), "abstained": int(res.abstained[:, j].sum()),
        })
    render_replay(console, ts.name, policy, risk, rows)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


@cli.command("calibrate")
@click.option("--traces", required=True, type=click.Path(path_type=Path))
@click.option("--policy", "policy", required=True, help="Policy family name.")
@_risk
@_eps
@_delta
@_seed
@click.option("--guarantee", default="pac", show_default=True, type=click.Choice(["pac", "marginal"]), help="pac: Learn-then-Test (epsilon, delta); marginal: conformal risk control (expected loss).")
@click.option("--chain-mode", default="mean", show_default=True, type=click.Choice(["mean", "draw"]))
@click.option("--k-policies", default=1, show_default=True, type=click.IntRange(1), help="How many policies you will choose among on this data (certifies at delta/K).")
@click.option("--all-questions", is_flag=True, help="Calibrate on every question instead of the hashed calibration half.")
@click.option("--select", "select", default="cost", show_default=True, type=click.Choice(["cost", "aggressive"]),
              help="cost: the cheapest certified setting on the calibration questions, full compute when none pays; "
                   "aggressive: the most aggressive certified setting, whatever it costs.")
@click.option("--latency-weight", default=0.0, show_default=True, type=click.FloatRange(0),
              help="--select cost: add this many tokens of cost per token of latency (the longest live chain).")
@_settings_from
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Policy file (JSON) to write.")
def calibrate_cmd(traces, policy, risk, epsilon, delta, seed, guarantee, chain_mode, k_policies, all_questions, select, latency_weight,  # noqa: ANN001
                  settings_from, out) -> None:
    """Certify a family's settings and write a policy file with the cheapest certified one.

    Fixed-sequence testing certifies a set of settings at once; the one deployed is
    the cheapest of them on the calibration questions (generated plus probe tokens),
    and full compute when none costs less. A family that learns (learned_exit) is
    first fitted on the set's training role, unless --settings-from gives it a
    fitted model; the questions it learned from are left out of calibration.
    """
    import numpy as np

    from stopwise.rules.calibrate import calibrate_family, policy_file
    from stopwise.stats.pvalues import min_certifiable_epsilon
    from stopwise.stats.split import split_mask
    from stopwise.traces import read_trace_set

    ts = read_trace_set(traces)
    fam = _prepared_family(policy, ts, settings_from)
    qids = ts.questions.column("question_id").to_pylist()
    mask = np.ones(len(qids), bool) if all_questions else split_mask(qids)
    trained = fam.training_mask(ts)
    if trained is not None:
        mask &= ~trained
    res = fam.replay(ts)
    cal = calibrate_family(res, mask, ts.n_questions, risk=risk, epsilon=epsilon, delta=delta, k_policies=k_policies,
                           chain_mode=chain_mode, seed=seed, guarantee=guarantee, select=select, latency_weight=latency_weight)
    doc = policy_file(fam, cal, ts, risk=risk, chain_mode=chain_mode)
    doc["calibration_questions"] = ("all" if all_questions else "hashed calibration half (stopwise.stats.split)") + (
        f", less the {int(trained.sum())} questions the family learned from" if trained is not None and trained.any() else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    c = cal.certificate
    min_eps = min_certifiable_epsilon(int(mask.sum()), delta / k_policies)
    console.print(f"{ts.name}: smallest certifiable epsilon with {int(mask.sum())} questions at delta {delta}/{k_policies}: {min_eps:.3f}"
                  + ("  [bold red](too small for the requested epsilon)[/]" if min_eps > epsilon else ""))
    if cal.certified:
        console.print(f"[green]certified[/] {policy} at {fam.knob}={cal.threshold:g} (grid index {cal.index}): "
                      f"{c.guarantee} risk<={epsilon} (empirical {c.empirical_risk:.4f}, n={c.n}, p={c.p_value if c.p_value is not None else float('nan'):.3g}); "
                      f"saves {cal.calibration_saved:.1%} of full compute on the calibration questions; wrote {out}")
    elif cal.keep_full:
        cheapest = float(np.min(cal.costs[: cal.certified_index + 1]))
        console.print(f"[yellow]no saving: keep full compute[/]: {policy} is certified up to {fam.knob}="
                      f"{float(res.grid[cal.certified_index]):g}, but its cheapest certified setting costs {cheapest:,.0f} tokens per "
                      f"question against {cal.full_cost:,.0f} for full compute (probes included); the policy file deploys full compute; wrote {out}")
    else:
        console.print(f"[yellow]not certified[/]: even the safest setting of {policy} fails the test; the policy file falls back to full compute; wrote {out}")


@cli.group("hidden")
def hidden_group() -> None:
    """Hidden-state features at probe positions (extra [hidden]): collect them, and test whether they help."""


@hidden_group.command("collect")
@click.option("--traces", "trace_dir", required=True, type=click.Path(path_type=Path), help="A trace set with probes and token strings.")
@click.option("--model", default="embedded", show_default=True, help="The model that wrote the set: a registry name or a GGUF path.")
@click.option("--chains", default=1, show_default=True, type=click.IntRange(1), help="Chains per question to re-run.")
@click.option("--layer", default=None, type=click.IntRange(0), help="Hidden layer (default: two thirds of the depth).")
@click.option("--threads", default=None, type=click.IntRange(1))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Sidecar directory (resumable).")
def hidden_collect_cmd(trace_dir, model, chains, layer, threads, out) -> None:  # noqa: ANN001
    """Re-run logged chains through the model in transformers and store float16 hidden states at every probe."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from stopwise.hidden import collect_hidden
    from stopwise.traces import read_trace_set

    ts = read_trace_set(trace_dir)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console) as progress:
        task = progress.add_task(f"hidden states of {ts.name}", total=ts.n_questions)
        collect_hidden(ts, model, out, chains=chains, layer=layer, threads=threads, command=shlex.join(["stopwise", *sys.argv[1:]]),
                       progress=lambda done, total: progress.update(task, completed=done, total=total))
    console.print(f"hidden states written to {out}")


@hidden_group.command("compare")
@click.option("--traces", "trace_dir", required=True, type=click.Path(path_type=Path))
@click.option("--hidden", "hidden_dir", required=True, type=click.Path(path_type=Path), help="The sidecar from stopwise hidden collect.")
@click.option("--pca", default=32, show_default=True, type=click.IntRange(1), help="PCA components of the hidden vector.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def hidden_compare_cmd(trace_dir, hidden_dir, pca, json_out) -> None:  # noqa: ANN001
    """Do hidden states add anything over logprob features? Grouped-CV AUROC of the learned probe's target."""
    from rich.table import Table

    from stopwise.hidden import hidden_comparison
    from stopwise.traces import read_trace_set

    r = hidden_comparison(read_trace_set(trace_dir), hidden_dir, pca=pca)
    r["command"] = _command_line()
    t = Table(title=f"{r['trace_set']}: predicting '{r['target']}' - {r['probes']} probes of {r['questions']} questions, "
                    f"{r['folds']}-fold CV grouped by question (layer {r['layer']}, PCA {r['pca_components']})", title_justify="left")
    for col in ("features", "AUROC", "log-loss", "AUROC gain over logprob (95% CI, questions resampled)"):
        t.add_column(col, justify="left" if col == "features" else "right")
    for k, label in (("logprob", "logprob features (" + ", ".join(r["feature_groups"]) + ")"), ("hidden", "hidden state"),
                     ("both", "both")):
        ci = r["results"][k].get("auroc_gain_over_logprob_95ci")
        t.add_row(label, f"{r['results'][k]['auroc']:.3f}", f"{r['results'][k]['log_loss']:.3f}",
                  "-" if ci is None else f"{ci[0]:+.3f} to {ci[1]:+.3f}")
    console.print(t)
    if json_out:
        _write_json(json_out, r)


@cli.command("validate")
@_traces
@click.option("--decision", "decisions", multiple=True, default=("stop",), show_default=True,
              type=click.Choice(["stop", "abstain", "sets", "select", "cascade", "all"]),
              help="What to check: stopping rules (the policy families), abstention, conformal answer sets, "
                   "conformal selection, cascades (repeatable; all = every one).")
@click.option("--policy", "policies", multiple=True, help="Only these families (--decision stop).")
@click.option("--risk", default="disagreement", show_default=True, type=click.Choice(["disagreement", "accuracy"]))
@_eps
@_delta
@click.option("--alpha", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="--decision sets: miscoverage.")
@click.option("--q", "q", default=0.1, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="--decision select: target FDR.")
@click.option("--small", default=None, type=click.Path(path_type=Path), help="--decision cascade: the small model's trace set (with --large).")
@click.option("--large", default=None, type=click.Path(path_type=Path), help="--decision cascade: the large model's trace set.")
@click.option("--routing-data", "routing_data", default=None, type=click.Path(path_type=Path),
              help="--decision cascade: RouteLLM-layout responses (default: the bundled pairs and routing data).")
@_seed
@click.option("--draws", default=500, show_default=True, type=click.IntRange(10))
@click.option("--n-calibration", default=None, type=click.IntRange(1), help="Questions per calibration draw (default: half the set).")
@click.option("--calibrator", default="ltt", show_default=True, type=click.Choice(["ltt", "naive"]),
              help="--decision stop: the calibrator under test. naive: a deliberately broken one (the plug-in rule, no "
                   "correction) in Learn-then-Test's place, to see validate fail and name the family.")
@click.option("--level", default=0.01, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Significance of the verdict: a guarantee fails when its violations reject 'probability <= delta' at "
                   "level / (rows checked); the synthetic negative control must be rejected at level.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
def validate_cmd(traces, decisions, policies, risk, epsilon, delta, alpha, q, small, large, routing_data, seed, draws,  # noqa: ANN001
                 n_calibration, calibrator, level, json_out) -> None:
    """Check the guarantees empirically over many random calibration draws, each beside a negative control.

    Risk guarantees (stopping, abstention, cascades): how often the chosen setting's population risk exceeds
    epsilon, against delta. Expectation guarantees (answer sets, selection): the mean coverage or FDP over draws.
    Exits 1 when the evidence contradicts a guarantee or the synthetic negative control is not rejected.
    """
    from stopwise.cli.render import render_validate, render_validate_marginal

    chosen = {"stop", "abstain", "sets", "select", "cascade"} if "all" in decisions else set(decisions)
    if (small is None) != (large is None):
        raise click.UsageError("give --small and --large together")
    rows: list[dict[str, Any]] = []
    marginal: list[dict[str, Any]] = []
    sets = _load_sets(traces) if chosen - {"cascade"} else []
    if "stop" in chosen:
        from stopwise.evaluation.bench import validate_controls, validate_set

        for ts in sets:
            rows += validate_set(ts, families=policies or None, risk=risk, epsilon=epsilon, delta=delta, n_calibration=n_calibration,
                                 draws=draws, seed=seed, calibrator=calibrator)
        rows += validate_controls(epsilon=epsilon, delta=delta, draws=draws, seed=seed)
    labeled = [ts for ts in sets if ts.has("correct")]
    if "abstain" in chosen:
        from stopwise.rules.selective import validate_selective

        for ts in labeled:
            rows += validate_selective(ts, epsilon=epsilon, delta=delta, draws=draws, seed=seed)
    if "sets" in chosen or "select" in chosen:
        from stopwise.rules.conformal import validate_selection, validate_sets

        for ts in labeled:
            if "sets" in chosen:
                marginal.append({"check": f"answer sets (lac), coverage >= {1 - alpha:g}", **validate_sets(ts, alpha=alpha, draws=draws, seed=seed)})
            if "select" in chosen:
                marginal.append({"check": f"selection, FDR <= {q:g}", **validate_selection(ts, q=q, draws=draws, seed=seed)})
    if "cascade" in chosen:
        rows += _validate_cascades(small, large, routing_data, epsilon=epsilon, delta=delta, draws=draws, seed=seed)
    from stopwise.evaluation.bench import validation_verdicts

    ok, problems = validation_verdicts(rows, marginal, level=level)
    if rows:
        render_validate(console, rows)
    if marginal:
        render_validate_marginal(console, marginal)
    if json_out:
        _write_json(json_out, rows + marginal)
    n_risk = sum(1 for r in rows if r["verdict"] in ("pass", "FAIL"))
    if ok:
        console.print(f"[green]validate: PASS[/]: {n_risk + len(marginal)} guarantees consistent with their claims "
                      f"(level {level:g}, Bonferroni over the {n_risk} risk rows)"
                      + ("; the synthetic negative control was rejected" if any(r["policy"] == "synthetic-control:naive" for r in rows) else ""))
        return
    for line in problems:
        err_console.print(f"validate: FAIL {line}", soft_wrap=True)
    sys.exit(1)


def _validate_cascades(small, large, routing_data, **kw: Any) -> list[dict[str, Any]]:  # noqa: ANN001
    from stopwise.data import bundled_cascade_pairs, bundled_routing_paths
    from stopwise.rules.routing import load_routing_data, pair_trace_sets, validate_cascade, validate_trace_cascade
    from stopwise.traces import read_trace_set

    pairs = [(small, large)] if small is not None else ([] if routing_data is not None else bundled_cascade_pairs())
    data = [routing_data] if routing_data is not None else ([] if small is not None else bundled_routing_paths())
    rows: list[dict[str, Any]] = []
    for s, lg in pairs:
        pair = pair_trace_sets(read_trace_set(s), read_trace_set(lg))
        for score in _CASCADE_SCORES:
            if score in pair.scores:
                rows += validate_trace_cascade(pair, score=score, **kw)
    for d in data:
        rows += validate_cascade(load_routing_data(d), **kw)
    return rows


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="stopwise")


if __name__ == "__main__":  # pragma: no cover
    main()
