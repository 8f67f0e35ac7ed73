"""The published rules ("anchors") against stopwise's certified policies, on the same test halves.

For one trace set and a grid of epsilon, every anchor is evaluated over its own
published parameter grid on the test half (hashed split, the same everywhere):

* ``[hindsight]``: its best published setting whose realized test risk is at
  most epsilon, chosen by looking at the test half (a bound on what any user of
  the rule could get, not a deployable number);
* ``[certified]``: the same rule's family calibrated by stopwise's calibrator on
  the calibration half (Learn-then-Test at ``delta / K``, K the methods certified
  on the set, so that picking the best row is covered), then evaluated once on
  the test half: the fair, deployable comparison;

next to the stopwise policies certified at epsilon the same way, and the
epsilon-oracle. A set whose calibration role is too small to certify an epsilon
says so instead of giving a number.

Anchors (see LITERATURE.md)
---------------------------
dynasor-cot/32, /64   answer convergence, k = 2..5, on the 32-token probe schedule and every other probe of it
                      (sets without a schedule, e.g. text-derived probes: ``dynasor-cot/cues``, every cue)
deer                  probe-answer confidence, thresholds 0.8..0.99 (every probe of the set)
first-try-matters     stop r probes after the first candidate answer, r = 0..8
deepconf-low, -high   DeepConf online, percentile 90 / 10 of the warm-up scores, windows scaled to the set
adaptive-consistency  the ``AdaptiveConsistency`` package's own Beta criterion, thresholds 0.8..0.99, fed class ids
esc                   windows 2..8
first-finish          the first of n chains to finish, n = 1..16

Stopwise policies
-----------------
``learned_exit (in-domain)`` is fitted on the set's own training role and
calibrated on the rest of its calibration half. ``learned_exit (transfer)`` is
fitted on *donor* sets (other sets whose question ids are disjoint from this
one's, e.g. MATH traces for a GSM8K set), so the whole calibration half
certifies it. The headline stopwise row is declared before any result is
seen: the transfer model where donors exist, else the in-domain one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from stopwise.evaluation.bench import held_out_curves
from stopwise.rules.calibrate import calibrate_family, subset_result
from stopwise.errors import ConfigError
from stopwise.evaluation.oracle import epsilon_oracle, stop_anywhere_result
from stopwise.policies.base import MISSING, ReplayResult, unit_losses
from stopwise.policies.features import available_groups, set_features
from stopwise.policies.learned import LearnedExit, ProbeModel, probe_labels, train_probe_model
from stopwise.policies.multi import chain_matrix
from stopwise.policies.registry import get_family
from stopwise.policies.single import probe_arrays
from stopwise.stats.pvalues import min_certifiable_epsilon
from stopwise.stats.ranking import auroc
from stopwise.stats.split import split_mask
from stopwise.traces.model import TraceSet

__all__ = ["EPSILONS", "ROW_KEYS", "Method", "anchor_methods", "compare_set", "donor_sets", "permuted_chains", "transfer_report"]

EPSILONS = (0.01, 0.02, 0.05, 0.1)
ROW_KEYS = ("trace_set", "epsilon", "method", "kind", "setting", "tokens_saved", "chains_saved", "test_risk", "certified")


@dataclass
class Method:
    """One rule replayed over a whole set, with the grid points that are its published settings."""

    method: str
    kind: str  # "anchor" or "stopwise"
    unit: str  # "single" or "multi": which oracle it is measured against
    result: ReplayResult
    published: list[int]
    label: Callable[[float], str]
    training_mask: np.ndarray | None = None
    headline: bool = False
    certify: bool = True


def _indices(grid: np.ndarray, values: Sequence[float]) -> list[int]:
    return [i for i, g in enumerate(grid.tolist()) if any(abs(g - v) < 1e-9 for v in values)]


def _single_chain_anchors(ts: TraceSet) -> list[Method]:
    out: list[Method] = []
    conv = get_family("answer_convergence")
    if conv.supports(ts) is not None:
        return out
    cues = set(ts.list_column("probe_cue")[1].tolist()) if ts.has("probe_cue") else set()
    if "schedule" in cues:
        for every in (None, 64):
            fam = get_family("answer_convergence", cues=["schedule"], every=every)
            res = fam.replay(ts)
            out.append(Method(f"dynasor-cot/{every or 32}", "anchor", "single", res, _indices(res.grid, (2, 3, 4, 5)), lambda v: f"k={v:g}"))
    else:
        res = conv.replay(ts)
        out.append(Method("dynasor-cot/cues", "anchor", "single", res, _indices(res.grid, (2, 3, 4, 5)), lambda v: f"k={v:g}"))
    deer = get_family("probe_confidence")
    if deer.supports(ts) is None:
        res = deer.replay(ts)
        out.append(Method("deer", "anchor", "single", res, _indices(res.grid, (0.8, 0.9, 0.95, 0.98, 0.99)), lambda v: f"threshold={v:g}"))
    ftm = get_family("first_candidate")
    res = ftm.replay(ts)
    out.append(Method("first-try-matters", "anchor", "single", res, list(range(len(res.grid))), lambda v: f"r={v:g}"))
    return out


def adaptive_consistency_package(ts: TraceSet, thresholds: Sequence[float] = (0.99, 0.95, 0.9, 0.8)) -> ReplayResult:
    """Adaptive-Consistency run by the ``AdaptiveConsistency`` package itself, over chains in draw order.

    After each new chain the package's ``BetaStoppingCriteria`` sees the answer
    class ids so far (missing answers do not vote) and decides whether to stop;
    the answer is the package's most common answer. Full compute is the
    majority vote over every chain (stopwise's ``majority_vote``).
    """
    try:
        from adaptive_consistency import BetaStoppingCriteria
    except ImportError as exc:  # pragma: no cover - the anchors extra is missing
        raise ConfigError("the adaptive-consistency anchor needs the AdaptiveConsistency package",
                          hint='pip install "stopwise[anchors]"') from exc
    mv = get_family("majority_vote")
    a_full, t_full, p_full, l_full, c_full = mv.full(ts)
    cm = chain_matrix(ts)
    q, g = len(cm.counts), len(thresholds)
    answer = np.empty((q, g), dtype=np.int32)
    tokens = np.empty((q, g), dtype=np.int64)
    chains = np.empty((q, g), dtype=np.int32)
    for k, thr in enumerate(thresholds):
        crit = BetaStoppingCriteria(conf_thresh=float(thr))
        for i in range(q):
            n = int(cm.counts[i])
            votes: list[int] = []
            stop_at, ans = n, int(a_full[i])
            for j in range(n):
                c = int(cm.klass[i, j])
                if c != MISSING:
                    votes.append(c)
                if votes:
                    out = crit.should_stop(votes)
                    if out["stop"]:
                        stop_at, ans = j + 1, int(out["most_common"])
                        break
            answer[i, k] = ans
            tokens[i, k] = int(cm.n_tokens[i, :stop_at].sum())
            chains[i, k] = stop_at
    ref = np.asarray(ts.questions.column("reference_class").to_numpy(zero_copy_only=False), dtype=np.int32)
    zeros = np.zeros((q, g), dtype=np.int64)
    return ReplayResult(
        family="adaptive-consistency (package)", grid=np.asarray(thresholds, dtype=np.float64), unit="question",
        unit_question=np.arange(q, dtype=np.int64), answer=answer, abstained=np.zeros((q, g), dtype=bool),
        tokens=tokens, probe_tokens=zeros, latency=tokens.copy(), chains=chains, answer_full=a_full,
        tokens_full=t_full, probe_tokens_full=p_full, latency_full=l_full, chains_full=c_full, correct_class=ref,
    )


def _multi_chain_anchors(ts: TraceSet) -> list[Method]:
    out: list[Method] = []
    if not ts.n_questions or int(ts.chain_counts.max()) < 2:
        return out
    dc = get_family("deepconf_online").fit_to(ts)
    if dc.supports(ts) is None:
        res = dc.replay(ts)
        out.append(Method("deepconf-low", "anchor", "multi", res, _indices(res.grid, (90,)), lambda v: f"percentile={v:g}"))
        out.append(Method("deepconf-high", "anchor", "multi", res, _indices(res.grid, (10,)), lambda v: f"percentile={v:g}", certify=False))
    res = adaptive_consistency_package(ts)
    out.append(Method("adaptive-consistency", "anchor", "multi", res, list(range(len(res.grid))), lambda v: f"threshold={v:g}"))
    res = get_family("esc").replay(ts)
    out.append(Method("esc", "anchor", "multi", res, list(range(len(res.grid))), lambda v: f"window={v:g}"))
    res = get_family("first_finish").replay(ts)
    out.append(Method("first-finish", "anchor", "multi", res, list(range(len(res.grid))), lambda v: f"n={v:g}"))
    return out


def donor_sets(ts: TraceSet, candidates: Sequence[TraceSet]) -> list[TraceSet]:
    """The candidate sets that can train a probe for ``ts``: no shared question id, and its feature groups."""
    ids = set(ts.questions.column("question_id").to_pylist())
    have = set(available_groups(ts))
    out = []
    for c in candidates:
        if c is ts or c.name == ts.name:
            continue
        if ids & set(c.questions.column("question_id").to_pylist()):
            continue
        if "probe" in have and "probe" in available_groups(c):
            out.append(c)
    return out


def _stopwise_methods(ts: TraceSet, donors: Sequence[TraceSet], model_cache: dict | None = None) -> list[Method]:
    out: list[Method] = []
    base = LearnedExit()
    if base.supports(ts) is not None:
        return out
    label = lambda v: f"threshold={v:g}"  # noqa: E731
    try:
        fam = base.train(ts)
        res = fam.replay(ts)
        out.append(Method("stopwise learned_exit (in-domain)", "stopwise", "single", res, list(range(len(res.grid))), label,
                          training_mask=fam.training_mask(ts)))
    except ConfigError:
        pass
    if donors:
        groups = set(available_groups(ts))
        for d in donors:
            groups &= set(available_groups(d))
        key = (tuple(sorted(d.content_hash for d in donors)), tuple(sorted(groups)))
        cache = model_cache if model_cache is not None else {}
        if key not in cache:
            cache[key] = train_probe_model(list(donors), groups=sorted(groups), fraction=1.0)
        model = cache[key]
        fam = LearnedExit(model=model)
        res = fam.replay(ts)
        out.append(Method("stopwise learned_exit (transfer)", "stopwise", "single", res, list(range(len(res.grid))), label,
                          training_mask=fam.training_mask(ts)))
    if out:
        out[-1].headline = True
    return out


def _stopwise_multi_methods(ts: TraceSet) -> list[Method]:
    """stopwise's own multi-chain families beside the multi-chain anchors: the anytime-valid ``eprocess_vote`` and
    the ``combined`` exit-and-sampling policy (fitted on the set's training role, which then never calibrates it)."""
    out: list[Method] = []
    if not ts.n_questions or int(ts.chain_counts.max()) < 2:
        return out
    for name, label in (("eprocess_vote", lambda v: f"alpha={v:g}"), ("combined", lambda v: f"path index={v:g}")):
        fam = get_family(name).fit_to(ts)
        if fam.supports(ts) is not None:
            continue
        try:
            fam = fam.train(ts)
        except ConfigError:
            continue
        res = fam.replay(ts)
        out.append(Method(f"stopwise {name}", "stopwise", "multi", res, list(range(len(res.grid))), label,
                          training_mask=fam.training_mask(ts)))
    return out


def anchor_methods(ts: TraceSet, donors: Sequence[TraceSet] = (), model_cache: dict | None = None) -> list[Method]:
    """Every anchor and stopwise policy that can run on ``ts`` (``model_cache`` reuses transfer probes across calls)."""
    return (_single_chain_anchors(ts) + _multi_chain_anchors(ts) + _stopwise_methods(ts, donors, model_cache)
            + _stopwise_multi_methods(ts))


def _probe_auroc(model: ProbeModel, ts: TraceSet, questions: np.ndarray) -> dict[str, Any]:
    """How well ``model`` ranks the answered probes of ``questions`` (bool mask) by its target."""
    pa = probe_arrays(ts)
    qi = np.asarray(ts.question_index, dtype=np.int64)[pa.chain]
    rows = np.flatnonzero(questions[qi] & (pa.klass != MISSING))
    if len(rows) == 0:
        return {"auroc": None, "probes": 0, "positive_share": None}
    X = set_features(ts, pa, model.groups)[rows]
    y = probe_labels(ts, pa)[rows].astype(bool)
    return {"auroc": auroc(model.scores(X), y), "probes": int(len(rows)), "positive_share": float(y.mean())}


def transfer_report(
    source: TraceSet | Sequence[TraceSet],
    target: TraceSet,
    *,
    epsilons: Sequence[float] = EPSILONS,
    delta: float = 0.1,
) -> dict[str, Any]:
    """The learned exit probe trained on ``source`` and used on ``target``, beside the one trained on ``target``.

    The transferred probe is fitted on every question of the source set(s)
    (which must share no question id with the target), on the feature groups
    both sides have; its threshold is certified on the target's whole
    calibration half and tested once on the test half. The in-domain probe is
    fitted on the target's training role and certified on the rest of its
    calibration half. Both are reported as certified savings and test risk per
    epsilon (with the epsilon-oracle) and as the AUROC of the probe's target
    ("this probe's answer is the chain's final answer") over the target's
    answered test-half probes, the part of the comparison that probe cost does
    not blur.

    Raises
    ------
    ConfigError
        If the sets share a question, or cannot feed the probe's feature groups.
    """
    sources = [source] if isinstance(source, TraceSet) else list(source)
    ids = set(target.questions.column("question_id").to_pylist())
    for s_ in sources:
        if ids & set(s_.questions.column("question_id").to_pylist()):
            raise ConfigError(f"transfer: {s_.name} shares questions with {target.name}", hint="transfer needs disjoint question sets")
    groups = set(available_groups(target))
    for s_ in sources:
        groups &= set(available_groups(s_))
    label = lambda v: f"threshold={v:g}"  # noqa: E731
    test = ~split_mask(target.questions.column("question_id").to_pylist())
    models: dict[str, ProbeModel] = {}
    methods: list[Method] = []
    for name, fam in (
        ("learned_exit (in-domain)", LearnedExit().train(target)),
        (f"learned_exit (from {'+'.join(s_.name for s_ in sources)})",
         LearnedExit(model=train_probe_model(sources, groups=sorted(groups), fraction=1.0))),
    ):
        res = fam.replay(target)
        models[name] = fam.model
        methods.append(Method(name, "stopwise", "single", res, list(range(len(res.grid))), label, training_mask=fam.training_mask(target)))
    table = compare_set(target, epsilons=epsilons, delta=delta, methods=methods)
    probes = {name: {**_probe_auroc(m, target, test), "groups": list(m.groups), "trained_on": [t["name"] for t in m.trained_on["trace_sets"]]}
              for name, m in models.items()}
    return {"source": [s_.name for s_ in sources], "target": target.name, "rows": table["rows"], "probes": probes}


def permuted_chains(ts: TraceSet, seed: int) -> TraceSet:
    """``ts`` with the chains of each question drawn in a seeded random order (seed 0: unchanged)."""
    if seed == 0 or ts.n_chains == 0:
        return ts
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    offsets = np.asarray(ts.question_offsets, dtype=np.int64)
    order = np.concatenate([offsets[i] + rng.permutation(int(n)) for i, n in enumerate(ts.chain_counts.tolist())])
    chains = ts.chains.take(pa.array(order))
    rank = np.concatenate([np.arange(int(n)) for n in ts.chain_counts.tolist()]).astype(np.int64)
    idx = chains.column_names.index("sample_id")
    chains = chains.set_column(idx, "sample_id", pa.array(rank, type=chains.schema.field("sample_id").type))
    return TraceSet(f"{ts.name}", ts.questions, chains, ts.provenance, ts.schema_version)


def compare_set(
    ts: TraceSet,
    *,
    epsilons: Sequence[float] = EPSILONS,
    delta: float = 0.1,
    donors: Sequence[TraceSet] = (),
    methods: list[Method] | None = None,
    model_cache: dict | None = None,
) -> dict[str, Any]:
    """All rows of the anchors table for one set (and the test-half curves for the Pareto plot).

    Every certified row is certified at ``delta / K``, K the number of methods
    certified on the set: the table is read as a menu ("best anchor, certified",
    the best stopwise row), so a pick among its rows must be covered, as in
    ``stopwise bench``.
    """
    methods = anchor_methods(ts, donors, model_cache) if methods is None else methods
    qids = ts.questions.column("question_id").to_pylist()
    calib = split_mask(qids)
    test = ~calib
    k = max(1, sum(1 for m in methods if m.certify))  # Bonferroni over the certified rows a reader picks from
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, Any]] = {}
    tested = {m.method: held_out_curves(m.result, test, ts.n_questions, "disagreement") for m in methods}
    for m in methods:
        c = tested[m.method]
        curves[m.method] = {"kind": m.kind, "published": m.published, "risk": c["risk"].tolist(), "saved": c["saved"].tolist()}
    oracle_res = {}
    for kind in sorted({m.unit for m in methods}):
        res = stop_anywhere_result(ts, kind)
        oracle_res[kind] = subset_result(res, test[res.unit_question])

    def row(eps: float, method: str, kind: str, setting: str | None, saved: float | None, chains: float | None,
            risk: float | None, certified: bool, **extra: Any) -> dict[str, Any]:
        r = {"trace_set": ts.name, "epsilon": eps, "method": method, "kind": kind, "setting": setting,
             "tokens_saved": saved, "chains_saved": chains, "test_risk": risk, "certified": certified}
        r.update(extra)
        return r

    for eps in epsilons:
        first = len(rows)
        for m in methods:
            c = tested[m.method]
            grid = m.result.grid.tolist()
            if m.kind == "anchor":
                ok = [i for i in m.published if c["risk"][i] <= eps + 1e-12 and c["saved"][i] > 0]
                if ok:
                    j = max(ok, key=lambda i: c["saved"][i])
                    rows.append(row(eps, f"{m.method} [hindsight]", "anchor", m.label(grid[j]), float(c["saved"][j]),
                                    float(c["chains_saved"][j]), float(c["risk"][j]), False, unit=m.unit))
                else:
                    rows.append(row(eps, f"{m.method} [hindsight]", "anchor", "no published setting saves at this risk: full compute",
                                    0.0, 0.0, 0.0, False, unit=m.unit))
            if not m.certify:
                continue
            fam_calib = calib if m.training_mask is None else calib & ~m.training_mask
            n_cal = int(fam_calib.sum())
            min_eps = min_certifiable_epsilon(max(n_cal, 1), delta / k, "binomial")
            name = f"{m.method} [certified]" if m.kind == "anchor" else m.method
            extra = {"unit": m.unit, "n_calibration": n_cal, "min_epsilon": min_eps, "headline": m.headline}
            if min_eps > eps:
                rows.append(row(eps, name, m.kind, f"too small to certify (needs epsilon >= {min_eps:.3f})", None, None, None, False, **extra))
                continue
            cal = calibrate_family(m.result, fam_calib, ts.n_questions, risk="disagreement", epsilon=eps, delta=delta, k_policies=k)
            if cal.index is None:
                why = "no saving: full compute" if cal.keep_full else "not certified: full compute"
                rows.append(row(eps, name, m.kind, why, 0.0, 0.0, 0.0, False, **extra))
            else:
                j = cal.index
                rows.append(row(eps, name, m.kind, m.label(grid[j]), float(c["saved"][j]), float(c["chains_saved"][j]),
                                float(c["risk"][j]), True, **extra))
        oracle_saved = {}
        for kind, ores in oracle_res.items():
            o = epsilon_oracle(ores, eps, unit_losses(ores, "disagreement"))
            hind = o["hindsight_saved"] >= o["grid_saved"]
            oracle_saved[kind] = float(o["saved"])
            rows.append(row(eps, f"oracle ({'one chain' if kind == 'single' else 'chains'})", "oracle", "hindsight, per unit",
                            float(o["saved"]), None, float(o["hindsight_loss"] if hind else o["grid_loss"]), False, unit=kind))
        for r in rows[first:]:
            osaved = oracle_saved.get(r["unit"])
            r["oracle_fraction"] = r["tokens_saved"] / osaved if (r["tokens_saved"] is not None and osaved) else None
    for r in rows:
        r.setdefault("headline", False)
    return {"trace_set": ts.name, "n_questions": ts.n_questions, "rows": rows, "curves": curves,
            "k_policies": k, "methods": [m.method for m in methods]}


def compare_sets(
    sets: Sequence[TraceSet],
    *,
    epsilons: Sequence[float] = EPSILONS,
    delta: float = 0.1,
    seeds: int = 1,
    donor_pool: Sequence[TraceSet] = (),
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`compare_set` on every set, with donors for the transfer probe taken from ``sets`` and ``donor_pool``.

    ``seeds > 1`` reruns sets with several chains per question with the chains
    of each question drawn in ``seeds`` seeded orders (seed 0 is the logged
    order); the rows carry their ``seed``. Sets with one chain per question
    have nothing to permute and run once.
    """
    out = []
    cache: dict = {}
    pool = list(sets) + [d for d in donor_pool if all(d.name != s.name for s in sets)]
    for ts in sets:
        donors = donor_sets(ts, pool)
        multi = ts.n_questions > 0 and int(ts.chain_counts.max()) > 1
        for seed in range(seeds if multi else 1):
            if progress:
                progress(f"{ts.name} (seed {seed})")
            res = compare_set(permuted_chains(ts, seed), epsilons=epsilons, delta=delta, donors=donors, model_cache=cache)
            res["seed"] = seed
            for r in res["rows"]:
                r["seed"] = seed
            out.append(res)
    return out


def summarize(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and spread) over seeds of each (set, epsilon, method) row, for the table."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for res in results:
        for r in res["rows"]:
            groups.setdefault((r["trace_set"], r["epsilon"], r["method"]), []).append(r)
    out = []
    for (name, eps, method), rs in groups.items():
        first = dict(rs[0])
        vals = [r["tokens_saved"] for r in rs if r["tokens_saved"] is not None]
        risks = [r["test_risk"] for r in rs if r["test_risk"] is not None]
        first["seeds"] = len(rs)
        if vals and len(rs) > 1:
            first["tokens_saved"] = float(np.mean(vals))
            first["tokens_saved_sd"] = float(np.std(vals))
            first["test_risk"] = float(np.mean(risks)) if risks else None
            first["certified"] = all(r["certified"] for r in rs)
            settings = sorted({str(r["setting"]) for r in rs})
            first["setting"] = settings[0] if len(settings) == 1 else f"{len(settings)} settings over seeds"
            fr = [r["oracle_fraction"] for r in rs if r.get("oracle_fraction") is not None]
            first["oracle_fraction"] = float(np.mean(fr)) if fr else None
        out.append(first)
    return out
