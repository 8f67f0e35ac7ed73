"""Cascades from a weak to a strong model, certified on the accuracy lost against always asking the strong one.

The weak model answers first. A router sees only what exists at that moment,
the prompt and the weak model's response, and scores how likely the weak answer
is right. The cascade keeps the weak answer when the score reaches a threshold
``t`` and otherwise escalates to the strong model. Correctness columns are
labels for training and calibration, never router inputs.

Loss of a question at threshold ``t``: the cascade kept the weak answer, the
weak answer is wrong and the strong model's is right (the accuracy the
cascade loses against always-strong). ``t`` runs over a grid from 1.0 (never
keep, always escalate: no loss) down to 0; Learn-then-Test picks the lowest
threshold whose loss is certified at most ``epsilon`` with probability
``1 - delta``.

Roles come from the project's hashed split of question ids (``q-`` plus the
sha1 of the prompt, as for the bundled sets):

- the router (TF-IDF of the prompt plus simple features of the weak response,
  fed to a ridge-regularized logistic regression) is fitted on the training
  role, split score < 0.2;
- the threshold is calibrated on 0.2 to 0.5;
- everything is reported on the test half, split score >= 0.5.

The oracle router escalates exactly the questions where only the strong model
is right.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stopwise.rules.calibrate import calibrate_losses
from stopwise.stats.ltt import cheapest_certified
from stopwise.errors import ConfigError, TraceFormatError
from stopwise.stats.ranking import auroc
from stopwise.stats.split import TRAIN_FRACTION, split_mask, training_mask

__all__ = [
    "GRID", "RoutingData", "TracePair", "cascade", "cascade_losses", "cascade_policy", "certify_cascade", "load_gsm8k_solutions", "load_routellm", "load_routing_data", "pair_trace_sets",
    "direct_answer_probability", "is_direct", "router_losses", "subset_trace_set", "trace_cascade", "validate_cascade", "validate_trace_cascade",
]

GRID = tuple(float(x) for x in np.round(np.linspace(1.0, 0.0, 41), 3))
_HEDGES = re.compile(r"\b(however|but|approximately|assume|cannot|can't|unclear|not sure|wait|actually)\b", re.I)


@dataclass
class RoutingData:
    """Questions answered by a weak and a strong model, with correctness labels."""

    name: str
    weak: str
    strong: str
    question_ids: list[str]
    prompts: list[str]
    weak_text: list[str]
    strong_text: list[str]
    weak_ok: np.ndarray
    strong_ok: np.ndarray
    weak_cost: float = 0.1  # the weak model's price per question relative to the strong model's


def _question_ids(prompts: list[str]) -> list[str]:
    """Question ids of routing data: the sha1 of the stripped prompt. Not
    :func:`~stopwise.traces.importers.common.question_id_from_text`, which also
    collapses inner whitespace: on the bundled GSM8K files 339 of 1,319 ids
    would change, and with them the hashed split and every routing figure."""
    return ["q-" + hashlib.sha1(p.strip().encode("utf-8")).hexdigest()[:12] for p in prompts]


def _bool(value: str, path: Path, line: int, field: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise TraceFormatError(f"{value!r} is not True or False", path=str(path), line=line, field=field,
                           hint="the RouteLLM layout has one correctness column per model")


def load_routellm(path: str | Path) -> RoutingData:
    """Read RouteLLM's ``<task>_responses.csv`` layout: prompt, two correctness columns, two responses."""
    path = Path(path)
    if not path.is_file():
        raise TraceFormatError("routing data not found", path=str(path), hint="e.g. ../shared/data/routing/routellm_gsm8k_responses.csv")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceFormatError("empty file", path=str(path), line=1) from None
        if len(header) != 5 or header[0] != "prompt" or not header[3].endswith("_response"):
            raise TraceFormatError(f"header {header} is not the RouteLLM layout", path=str(path), line=1,
                                   hint="expected: prompt,<weak>,<strong>,<weak>_response,<strong>_response")
        weak, strong = header[1], header[2]
        prompts, wt, st, wok, sok = [], [], [], [], []
        for row in reader:
            line = reader.line_num
            if len(row) != 5:
                raise TraceFormatError(f"{len(row)} fields, expected 5", path=str(path), line=line)
            prompts.append(row[0])
            wok.append(_bool(row[1], path, line, weak))
            sok.append(_bool(row[2], path, line, strong))
            wt.append(row[3])
            st.append(row[4])
    ids = _question_ids(prompts)
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    return RoutingData(name, weak, strong, ids, prompts, wt, st, np.asarray(wok), np.asarray(sok))


GSM8K_SETUPS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def load_gsm8k_solutions(path: str | Path, *, weak: str = "6b_verification", strong: str = "175b_verification") -> RoutingData:
    """Read openai/grade-school-math's ``example_model_solutions.jsonl``: per question, four GPT-3 set-ups
    (6B and 175B, fine-tuned and with a verifier), each ``{"is_correct", "solution"}``; ``weak`` and ``strong`` pick two."""
    import json

    path = Path(path)
    for name, v in (("weak", weak), ("strong", strong)):
        if v not in GSM8K_SETUPS:
            raise ConfigError(f"{name} set-up '{v}' is not one of {GSM8K_SETUPS}")
    if weak == strong:
        raise ConfigError(f"weak and strong are the same set-up '{weak}'")
    if not path.is_file():
        raise TraceFormatError("solutions file not found", path=str(path), hint="e.g. ../shared/data/gsm8k/example_model_solutions.jsonl")
    prompts, wt, st, wok, sok = [], [], [], [], []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise TraceFormatError(f"not JSON: {exc}", path=str(path), line=line_no) from None
            if not isinstance(rec, dict) or not isinstance(rec.get("question"), str):
                raise TraceFormatError("no 'question' string", path=str(path), line=line_no, field="question")
            for v, texts, oks in ((weak, wt, wok), (strong, st, sok)):
                sol = rec.get(v)
                if not isinstance(sol, dict) or not isinstance(sol.get("is_correct"), bool) or not isinstance(sol.get("solution"), str):
                    raise TraceFormatError("expected {\"is_correct\": bool, \"solution\": str}", path=str(path), line=line_no, field=v)
                texts.append(sol["solution"])
                oks.append(sol["is_correct"])
            prompts.append(rec["question"])
    if not prompts:
        raise TraceFormatError("no questions", path=str(path))
    ids = _question_ids(prompts)
    size = {"6b": 6.0, "175b": 175.0}
    cost = size[weak.split("_")[0]] / size[strong.split("_")[0]]  # per-token compute scales with parameters
    return RoutingData(f"gsm8k_{weak}_to_{strong}", weak, strong, ids, prompts, wt, st, np.asarray(wok), np.asarray(sok), weak_cost=cost)


def load_routing_data(path: str | Path, *, weak: str | None = None, strong: str | None = None) -> RoutingData:
    """RouteLLM's CSV layout (``.csv``, ``.csv.gz``) or GSM8K's example solutions (``.jsonl``, ``.jsonl.gz``)."""
    name = Path(path).name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return load_gsm8k_solutions(path, weak=weak or "6b_verification", strong=strong or "175b_verification")
    if weak or strong:
        raise ConfigError("--weak/--strong choose set-ups of GSM8K's example solutions (.jsonl); a RouteLLM CSV names its own two models")
    return load_routellm(path)


def _response_features(texts: list[str]) -> np.ndarray:
    rows = []
    for t in texts:
        words = max(len(t.split()), 1)
        rows.append([
            np.log1p(len(t)), np.log1p(words), float("####" in t), len(_HEDGES.findall(t)) / words * 100,
            np.log1p(len(re.findall(r"\d+(?:\.\d+)?", t))), np.log1p(t.count("\n")),
        ])
    return np.asarray(rows, dtype=np.float64)


def router_scores(data: RoutingData, train: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the router on ``train`` (prompt TF-IDF + weak-response features, ridge logistic, grouped-free CV on C)
    and score every question: the estimated probability that the weak answer is right."""
    from scipy import sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    if train.sum() < 20 or len(np.unique(data.weak_ok[train])) < 2:
        raise ConfigError(f"routing data '{data.name}': the training role has too few questions ({int(train.sum())}) to fit a router")
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=5000, sublinear_tf=True)
    vec.fit([data.prompts[i] for i in np.flatnonzero(train)])
    resp = _response_features(data.weak_text)
    scaler = StandardScaler().fit(resp[train])
    X = sparse.hstack([vec.transform(data.prompts), sparse.csr_matrix(scaler.transform(resp))]).tocsr()
    clf = LogisticRegressionCV(Cs=[0.01, 0.1, 1.0, 10.0], cv=5, scoring="neg_log_loss", max_iter=5000)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        clf.fit(X[train], data.weak_ok[train])
    info = {"features": int(X.shape[1]), "C": float(np.ravel(clf.C_)[0]), "training_questions": int(train.sum())}
    return clf.predict_proba(X)[:, 1], info


def cascade_losses(weak_ok: np.ndarray, strong_ok: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(loss, kept)``, each (Q, G) over :data:`GRID`: the loss against always-strong, and whether the weak answer is kept."""
    kept = np.asarray(scores)[:, None] >= np.asarray(GRID)[None, :]
    kept[:, 0] = False  # t = 1.0: always escalate (the safe end)
    lost = (~np.asarray(weak_ok, dtype=bool) & np.asarray(strong_ok, dtype=bool))[:, None]
    return (kept & lost).astype(np.float64), kept


def router_losses(data: RoutingData, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cascade_losses` of a routing data set."""
    return cascade_losses(data.weak_ok, data.strong_ok, scores)


def cascade_cost(kept: np.ndarray, weak_cost: np.ndarray, strong_cost: np.ndarray) -> np.ndarray:
    """Mean cost per question of each keep-threshold (the columns of ``kept``, (Q, G)): the weak model always
    runs, the strong one only where the weak answer is not kept."""
    return (weak_cost[:, None] + np.where(kept, 0.0, strong_cost[:, None])).mean(axis=0)


def certify_cascade(
    scores: np.ndarray, weak_ok: np.ndarray, strong_ok: np.ndarray, calib: np.ndarray, test: np.ndarray, *,
    epsilon: float, delta: float, weak_cost: np.ndarray | float, strong_cost: np.ndarray | float, k_policies: int = 1,
) -> dict[str, Any]:
    """Certify the keep-threshold on ``calib`` (LTT, binomial) and report the cascade on ``test``.

    Costs are per question (arrays) or constants, in one unit (tokens, or the
    strong model's price = 1); the cascade pays the weak cost always and the
    strong cost when it escalates. The curves give accuracy and cost of every
    grid threshold on the test half (hindsight: the cost-accuracy frontier).
    """
    weak_ok, strong_ok = np.asarray(weak_ok, dtype=bool), np.asarray(strong_ok, dtype=bool)
    loss, kept = cascade_losses(weak_ok, strong_ok, scores)
    index, cert, _, _ = calibrate_losses(loss[calib], risk="accuracy", epsilon=epsilon, delta=delta, method="binomial",
                                         k_policies=k_policies)
    wc_all = np.broadcast_to(np.asarray(weak_cost, dtype=np.float64), weak_ok.shape)
    sc_all = np.broadcast_to(np.asarray(strong_cost, dtype=np.float64), weak_ok.shape)
    # the cheapest certified threshold on the calibration questions; always-large (risk 0) is a candidate,
    # so a cascade that costs more than the large model alone is never deployed
    cal_cost = cascade_cost(kept[calib], wc_all[calib], sc_all[calib])
    chosen = cheapest_certified(cal_cost, index, float(sc_all[calib].mean()) if np.any(calib) else 0.0)
    pays = chosen is not None
    j = chosen if pays else 0
    wc, sc = wc_all[test], sc_all[test]
    w, s, k = weak_ok[test], strong_ok[test], kept[test]
    acc_curve = np.where(k, w[:, None], s[:, None]).mean(axis=0)
    cost_curve = cascade_cost(k, wc, sc)
    oracle_escalate = ~w & s
    strong_mean = float(sc.mean()) if len(sc) else float("nan")
    if cert.certified and not pays:
        decision = "no saving: always use the large model"
    elif not cert.certified:
        decision = "nothing certified: always use the large model"
    else:
        decision = f"cascade at threshold {GRID[j]:g}"
    return {
        "epsilon": epsilon, "delta": delta, "k_policies": k_policies, "certified": pays, "threshold": GRID[j] if pays else None,
        "decision": decision, "certified_up_to": None if index is None else GRID[index],
        "n_calibration": int(np.sum(calib)), "n_test": int(np.sum(test)),
        # where nothing pays, the deployed rule is the large model alone: its accuracy and cost
        "accuracy_cascade": float(acc_curve[j]) if pays else float(s.mean()), "accuracy_strong": float(s.mean()),
        "accuracy_weak": float(w.mean()),
        "accuracy_loss": float(s.mean() - acc_curve[j]) if pays else 0.0, "test_risk": float(loss[test, j].mean()) if pays else 0.0,
        "escalated": float((~k[:, j]).mean()) if pays else 1.0, "cost": float(cost_curve[j]) if pays else strong_mean,
        "cost_strong": strong_mean,
        "cost_strong_cascade": (float(np.where(k[:, j], 0.0, sc).mean()) if pays else strong_mean) if len(sc) else float("nan"),
        "cost_weak": float(wc.mean()) if len(wc) else float("nan"),
        "oracle_escalated": float(oracle_escalate.mean()), "accuracy_oracle": float((w | s).mean()),
        "oracle_cost": float((wc + np.where(oracle_escalate, sc, 0.0)).mean()) if len(wc) else float("nan"),
        "router_auroc": auroc(np.asarray(scores)[test], w),
        "curve": {"threshold": list(GRID), "accuracy": acc_curve.tolist(), "cost": cost_curve.tolist()},
    }


def cascade(data: RoutingData, *, epsilon: float = 0.02, delta: float = 0.1, weak_cost: float | None = None) -> dict[str, Any]:
    """Fit, certify and test the weak-to-strong cascade; report it next to always-strong, always-weak and the oracle.

    ``weak_cost`` is the weak model's price per question relative to the strong
    model's (the weak model always runs first in a cascade); default: the data's
    own (0.1 for RouteLLM's pair, the parameter ratio for GPT-3 6B against 175B).
    """
    if weak_cost is None:
        weak_cost = data.weak_cost
    train = training_mask(data.question_ids, TRAIN_FRACTION)
    half = split_mask(data.question_ids)
    calib, test = half & ~train, ~half
    scores, info = router_scores(data, train)
    out = certify_cascade(scores, data.weak_ok, data.strong_ok, calib, test, epsilon=epsilon, delta=delta,
                          weak_cost=weak_cost, strong_cost=1.0)
    return {
        "data": data.name, "weak": data.weak, "strong": data.strong, "n_train": int(train.sum()), "router": info,
        "weak_cost": weak_cost, "cost_unit": "strong model's price per question", **out,
        "guarantee": f"accuracy loss vs always-{data.strong} <= {epsilon} with probability >= {1 - delta} (Learn-then-Test)",
    }


def validate_cascade(data: RoutingData, *, epsilon: float = 0.02, delta: float = 0.1, draws: int = 300, seed: int = 0) -> list[dict[str, Any]]:
    """The cascade's guarantee over random calibration draws from the non-training questions (LTT and the naive control)."""
    from stopwise.rules.calibrate import validation_row
    from stopwise.stats.validate import ltt_calibrator, naive_calibrator, validate_calibrator

    train = training_mask(data.question_ids, TRAIN_FRACTION)
    scores, _ = router_scores(data, train)
    loss, _ = router_losses(data, scores)
    pop = loss[~train]
    n = len(pop) // 2
    rows = []
    for label, cal in (("cascade", ltt_calibrator(epsilon, delta, "binomial")), ("naive-control:cascade", naive_calibrator(epsilon))):
        v = validate_calibrator(pop, n, draws, cal, epsilon, delta, seed=seed)
        rows.append(validation_row(v, trace_set=data.name, policy=label, risk="accuracy loss vs strong", method="binomial"))
    return rows


# --- cascades between two trace sets (a small and a large model on the same questions) -------------------

# Qwen2.5 0.5B and 1.5B: 0.49B and 1.54B parameters; a decoded token's compute scales with them
DEFAULT_WEAK_TOKEN_PRICE = 0.32


@dataclass
class TracePair:
    """Two models' trace sets on the same questions, reduced to what a cascade needs, per question."""

    name: str
    weak: str
    strong: str
    chains: int
    question_ids: list[str]
    scores: dict[str, np.ndarray]
    weak_ok: np.ndarray
    strong_ok: np.ndarray
    weak_tokens: np.ndarray
    weak_probe_tokens: np.ndarray
    strong_tokens: np.ndarray
    same_model: bool = False  # both sets come from one model file (a think-or-not pair)


def subset_trace_set(ts, question_ids: list[str], chains: int | None = None):  # noqa: ANN001, ANN201 - TraceSet
    """``ts`` restricted to ``question_ids`` (in that order) and to the first ``chains`` chains of each."""
    import pyarrow as pa

    from stopwise.traces.model import TraceSet

    pos = {q: i for i, q in enumerate(ts.questions.column("question_id").to_pylist())}
    qidx = np.asarray([pos[q] for q in question_ids], dtype=np.int64)
    off, counts = np.asarray(ts.question_offsets), np.asarray(ts.chain_counts)
    keep = [off[i] + np.arange(int(counts[i]) if chains is None else min(int(counts[i]), chains)) for i in qidx]
    rows = np.concatenate(keep).astype(np.int64) if keep else np.zeros(0, np.int64)
    return TraceSet(ts.name, ts.questions.take(pa.array(qidx)), ts.chains.take(pa.array(rows)), ts.provenance, ts.schema_version)


def _per_question(ts, name: str) -> np.ndarray:  # noqa: ANN001
    if name == "probe_cost":
        if not ts.has("probe_position"):
            return np.zeros(ts.n_questions)
        from stopwise.policies.single import probe_arrays

        per_chain = probe_arrays(ts).total_cost.astype(np.float64)
    else:
        per_chain = np.asarray(ts.column(name, fill=0), dtype=np.float64)
    return np.bincount(np.asarray(ts.question_index), weights=per_chain, minlength=ts.n_questions)


def is_direct(ts) -> bool:  # noqa: ANN001 - TraceSet
    """Whether ``ts`` holds direct answers (``stopwise collect --direct``: no chain of thought)."""
    return bool((getattr(ts.provenance, "collect", None) or {}).get("direct"))


def direct_answer_probability(ts) -> np.ndarray:  # noqa: ANN001 - TraceSet
    """Per question, the probability of a direct answer (``stopwise collect --direct``): the product of its token
    probabilities up to the token that closes the forced box, for the first chain; 0 where no box closes."""
    off, toks = ts.list_column("tokens")
    _, lps = ts.list_column("token_logprobs")
    first = np.asarray(ts.question_offsets)[:-1]
    out = np.zeros(ts.n_questions)
    for q, j in enumerate(first):
        if q >= ts.n_questions or ts.chain_counts[q] == 0:
            continue
        depth, total = 1, 0.0
        for t, lp in zip(toks[off[j]:off[j + 1]], lps[off[j]:off[j + 1]]):
            total += float(lp)
            depth += str(t).count("{") - str(t).count("}")
            if depth <= 0:
                out[q] = float(np.exp(total))
                break
    return out


def pair_trace_sets(small, large, *, chains: int | None = None, large_chains: int | None = None) -> TracePair:  # noqa: ANN001
    """Pair a small and a large model's sets on their common questions (matched by question id).

    The small model's answer is the majority of its first ``chains`` chains
    (all by default; the large model's first ``large_chains``), scored by every score of :func:`stopwise.rules.conformal.question_scores`,
    which uses only what exists when the small model has finished; the large
    model's answer is the majority of its chains. Correctness is the label.
    """
    from stopwise.rules.conformal import question_scores, selection_scores

    for ts in (small, large):
        if not ts.has("correct"):
            raise ConfigError(f"trace set '{ts.name}' has no labels (correct); a cascade is certified on accuracy")
    in_large = set(large.questions.column("question_id").to_pylist())
    common = [q for q in small.questions.column("question_id").to_pylist() if q in in_large]
    if len(common) < 20:
        raise ConfigError(f"trace sets '{small.name}' and '{large.name}' share {len(common)} questions; a cascade needs at least 20",
                          hint="collect the large model on the small set's questions (same --dataset, --offset and --questions)")
    s, lg = subset_trace_set(small, common, chains), subset_trace_set(large, common, large_chains)
    scores, wrong = question_scores(s)
    if is_direct(s) and s.has("token_logprobs"):
        scores["answer_probability"] = direct_answer_probability(s)
    _, _, large_wrong = selection_scores(lg, "vote_share")
    k = int(np.max(s.chain_counts)) if s.n_questions else 0
    return TracePair(
        f"{small.name}->{large.name}", small.name, large.name, k, common, scores, ~wrong, ~large_wrong,
        _per_question(s, "n_tokens"), _per_question(s, "probe_cost"), _per_question(lg, "n_tokens"),
        same_model=bool(small.provenance.model_sha256) and small.provenance.model_sha256 == large.provenance.model_sha256,
    )


def trace_cascade(pair: TracePair, *, score: str, epsilon: float = 0.05, delta: float = 0.1,
                  weak_token_price: float | None = None, k_policies: int = 1) -> dict[str, Any]:
    """Certify the cascade "keep the small model's answer when ``score`` reaches t" and report it on the test half.

    No router is trained (the scores are fixed functions of the small model's
    chains), so the calibration half is the whole hashed calibration half.
    Cost is in large-model tokens: a small-model token counts ``weak_token_price``
    (compute per token scales with parameters; default 0.32 for two models, 1 when
    both sets come from one model file), probe tokens included when the score
    reads probes.
    """
    if weak_token_price is None:
        weak_token_price = 1.0 if pair.same_model else DEFAULT_WEAK_TOKEN_PRICE
    if score not in pair.scores:
        raise ConfigError(f"score '{score}' is not available for {pair.name}", hint=f"available: {sorted(pair.scores)}")
    calib = split_mask(pair.question_ids)
    test = ~calib
    probes = score.startswith("probe_")
    weak_tokens = pair.weak_tokens + (pair.weak_probe_tokens if probes else 0.0)
    out = certify_cascade(pair.scores[score], pair.weak_ok, pair.strong_ok, calib, test, epsilon=epsilon, delta=delta,
                          weak_cost=weak_token_price * weak_tokens, strong_cost=pair.strong_tokens, k_policies=k_policies)
    return {
        "data": pair.name, "weak": pair.weak, "strong": pair.strong, "score": score, "chains": pair.chains, **out,
        "cost_unit": f"large-model tokens (a small-model token = {weak_token_price:g})",
        "weak_token_price": weak_token_price,
        "tokens_weak": float(weak_tokens[test].mean()), "tokens_strong": float(pair.strong_tokens[test].mean()),
        "tokens_cascade_strong": out["cost_strong_cascade"],
        "guarantee": f"accuracy loss vs always-{pair.strong} <= {epsilon} with probability >= {1 - delta} (Learn-then-Test"
                     + (f" at delta/{k_policies}: one of {k_policies} rules compared on this pair)" if k_policies > 1 else ")"),
    }


def validate_trace_cascade(pair: TracePair, *, score: str, epsilon: float = 0.05, delta: float = 0.1, draws: int = 300,
                           seed: int = 0) -> list[dict[str, Any]]:
    """The trace cascade's guarantee over random calibration halves of the pair's questions (LTT and the naive control)."""
    from stopwise.rules.calibrate import validation_row
    from stopwise.stats.validate import ltt_calibrator, naive_calibrator, validate_calibrator

    loss, _ = cascade_losses(pair.weak_ok, pair.strong_ok, pair.scores[score])
    n = len(loss) // 2
    rows = []
    for label, cal in ((f"cascade:{score}", ltt_calibrator(epsilon, delta, "binomial")),
                       (f"naive-control:cascade:{score}", naive_calibrator(epsilon))):
        v = validate_calibrator(loss, n, draws, cal, epsilon, delta, seed=seed)
        rows.append(validation_row(v, trace_set=pair.name, policy=label, risk="accuracy loss vs strong", method="binomial"))
    return rows


def cascade_policy(small, large, *, chains: int, epsilon: float = 0.05, delta: float = 0.1,  # noqa: ANN001
                   weak_token_price: float | None = None) -> dict[str, Any]:
    """A policy file that serves the certified small-to-large cascade with ``stopwise serve --escalate-to``.

    The rule runs on the small model as the ``vote_margin_abstain`` family over
    ``chains`` chains: it keeps the small model's vote when the margin reaches
    the threshold and otherwise abstains, which the server turns into an
    escalation. The threshold is certified on the pair's calibration half over
    the family's own grid, tested from the safe end (always escalate) down, on
    the accuracy lost against always asking the large model; the threshold
    deployed is the cheapest certified one on the calibration half (cost in
    large-model tokens, a small-model token at ``weak_token_price``). Raises when
    no threshold is certified, or when none costs less than the large model alone
    (then serve the large model alone).
    """
    from stopwise.rules.calibrate import Calibration, policy_file
    from stopwise.policies.registry import get_family

    if chains < 2:
        raise ConfigError("a served cascade decides on the vote margin, which needs at least 2 small-model chains",
                          hint="pass --chains 2 or more")
    pair = pair_trace_sets(small, large, chains=chains)
    fam = get_family("vote_margin_abstain")
    fam_grid = [float(x) for x in fam.grid]
    # safe end first: a threshold above every margin keeps nothing (always escalate)
    grid = [float("inf"), *sorted(fam_grid, reverse=True)]
    calib = split_mask(pair.question_ids)
    kept = pair.scores["vote_margin"][:, None] >= np.asarray(grid)[None, :]
    lost = (~pair.weak_ok & pair.strong_ok)[:, None]
    loss = (kept & lost).astype(np.float64)
    index, cert, p, risks = calibrate_losses(loss[calib], risk="accuracy", epsilon=epsilon, delta=delta, method="binomial")
    if index is None or index == 0:
        raise ConfigError(f"no keep-threshold of the cascade {pair.name} is certified at epsilon {epsilon} (delta {delta}) "
                          f"on {int(calib.sum())} calibration questions: always escalating is the only safe rule",
                          hint="serve the large model alone, or certify at a larger epsilon or on more questions")
    if weak_token_price is None:
        weak_token_price = 1.0 if pair.same_model else DEFAULT_WEAK_TOKEN_PRICE
    weak_cost = weak_token_price * pair.weak_tokens[calib]
    strong_cost = pair.strong_tokens[calib]
    # column 0 ("always escalate") is served as the large model alone: it is the full-compute candidate, not a cascade
    cal_cost = cascade_cost(kept[calib], weak_cost, strong_cost)
    chosen = cheapest_certified(cal_cost[1:], index - 1, float(strong_cost.mean()))
    if chosen is None:
        raise ConfigError(f"no saving: every certified keep-threshold of the cascade {pair.name} costs more than the large "
                          f"model alone on the calibration half ({cal_cost[1:index + 1].min():,.0f} against "
                          f"{strong_cost.mean():,.0f} large-model tokens per question, a small-model token at {weak_token_price:g})",
                          hint="serve the large model alone (always use the large model), or use fewer small-model chains")
    index = chosen + 1
    cert = dataclasses.replace(cert, index=index, empirical_risk=float(risks[index]), p_value=float(p[index]))
    threshold = grid[index]
    small_k = subset_trace_set(small, pair.question_ids, chains)
    cal = Calibration(fam.name, "accuracy_loss_vs_large", fam_grid.index(threshold), threshold, cert, p, risks)
    doc = policy_file(fam, cal, small_k, risk="accuracy_loss_vs_large", chain_mode="question")
    doc["cascade"] = {
        "small": small.name, "large": large.name, "chains": chains, "score": "vote_margin",
        "large_model": large.provenance.model, "large_model_sha256": large.provenance.model_sha256,
        "guarantee": f"accuracy loss vs always-{large.name} <= {epsilon} with probability >= {1 - delta} (Learn-then-Test, "
                     f"binomial, fixed sequence from always-escalate), when the server runs {chains} chains "
                     f"(--max-chains {chains}) and escalates abstentions to the large model (--escalate-to)",
        "calibration_questions": int(calib.sum()),
        # the certificate's index counts along this sequence (the family's index is the doc's "index")
        "tested_sequence": ["always escalate", *grid[1:]],
    }
    return doc
