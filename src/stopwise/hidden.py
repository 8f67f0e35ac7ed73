"""Hidden-state features at probe positions, and whether they add anything over the logprob features.

``collect_hidden`` re-runs logged chains of a trace set through the same model
in transformers (:class:`stopwise.backends.transformers_hidden.HiddenStateModel`)
and stores, for every probe of the first ``chains`` chains of each question, the
float16 residual-stream vector of one layer at the probe's position (the last
token before the forcing string). The result is a sidecar directory next to the
trace set's own files, so the set's schema and content hash are unchanged:

``hidden.json``      manifest: source set and content hash, model and sha256, layer, size, command
``chunks/*.parquet`` question_id, sample_id, probe_position (list), hidden (list of float16 vectors)

Collection is resumable: questions already in a chunk are skipped.

``hidden_comparison`` answers "do hidden states add anything over logprob
features?" for the learned exit probe's target (this probe's answer is the
chain's final answer) on the probes that carry an answer: grouped 5-fold
cross-validation by question over the chains with hidden states, ridge logistic
regression on (a) the logprob feature groups, (b) the hidden vector reduced by
PCA fitted inside each training fold, (c) both; held-out AUROC and log-loss.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stopwise.errors import ConfigError

__all__ = ["collect_hidden", "hidden_comparison", "load_hidden"]

FORMAT = "stopwise-hidden-v1"


def _prompt(tokenizer: Any, system: str | None, question: str) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{question}\n\n" if system else f"{question}\n\n"


def collect_hidden(
    ts,  # noqa: ANN001 - TraceSet
    model: str,
    out: Path,
    *,
    chains: int = 1,
    layer: int | None = None,
    threads: int | None = None,
    command: str = "",
    progress: Callable[[int, int], None] | None = None,
    loaded: Any = None,
) -> Path:
    """Write the hidden-state sidecar of ``ts`` to ``out`` (resumable); returns ``out``.

    ``loaded``: a :class:`HiddenStateModel` of ``model`` already in memory (loading takes a minute).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stopwise.backends.transformers_hidden import HiddenStateModel
    from stopwise.models import resolve_model

    if not ts.has("probe_position") or not ts.has("tokens"):
        raise ConfigError(f"trace set '{ts.name}' has no probes or no token strings; hidden states are read at probe positions")
    resolved = resolve_model(model)
    out = Path(out)
    (out / "chunks").mkdir(parents=True, exist_ok=True)
    man_path = out / "hidden.json"
    manifest = json.loads(man_path.read_text()) if man_path.is_file() else None
    if manifest and (manifest.get("source_content_hash") != ts.content_hash or manifest.get("chains") != chains):
        raise ConfigError(f"{man_path} was written for another set or chain count",
                          hint="use a new --out directory, or the same set and --chains to resume")
    hm = loaded if loaded is not None else HiddenStateModel(resolved.path, layer=layer, threads=threads)
    if manifest and manifest.get("layer") != hm.layer:
        raise ConfigError(f"{man_path} holds layer {manifest.get('layer')}, not {hm.layer}", hint="pass the same --layer to resume")
    manifest = {
        "format": FORMAT, "source": ts.name, "source_content_hash": ts.content_hash, "model": resolved.title,
        "model_sha256": resolved.sha256, "layer": hm.layer, "n_layers": hm.n_layers, "hidden_size": hm.hidden_size,
        "chains": chains, "dtype": "float16", "command": command,
        "how": "teacher-forced transformers forward pass over the chat prompt plus the logged chain text; the vector "
               "of the last model token ending at or before each probe's character offset",
    }
    man_path.write_text(json.dumps(manifest, indent=1) + "\n")
    done = set()
    for f in sorted((out / "chunks").glob("*.parquet")):
        done.update(pq.read_table(f, columns=["question_id"]).column("question_id").to_pylist())
    qids = ts.questions.column("question_id").to_pylist()
    questions = ts.questions.column("question").to_pylist()
    system = (ts.provenance.sampling or {}).get("system_prompt")
    tok_off, tok_vals = ts.list_column("tokens")
    pos_off, pos_vals = ts.list_column("probe_position")
    texts = ts.column("text")
    samples = np.asarray(ts.column("sample_id"))
    off = np.asarray(ts.question_offsets)
    todo = [i for i, q in enumerate(qids) if q not in done]
    buf: dict[str, list] = {"question_id": [], "sample_id": [], "probe_position": [], "hidden": []}
    n_chunk = len(list((out / "chunks").glob("*.parquet")))
    last = time.monotonic()

    def flush() -> None:
        nonlocal n_chunk, last
        if not buf["question_id"]:
            return
        vec = np.concatenate(buf["hidden"]) if buf["hidden"] else np.zeros((0, hm.hidden_size), np.float16)
        lens = np.asarray([len(h) for h in buf["hidden"]], dtype=np.int32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), hm.hidden_size)
        hidden = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)), inner)
        table = pa.table({"question_id": buf["question_id"], "sample_id": pa.array(buf["sample_id"], pa.int64()),
                          "probe_position": pa.array(buf["probe_position"], pa.list_(pa.int32())), "hidden": hidden})
        tmp = out / "chunks" / f".chunk-{n_chunk:06d}.tmp"
        pq.write_table(table, tmp)
        tmp.rename(out / "chunks" / f"chunk-{n_chunk:06d}.parquet")  # atomic: a killed run leaves no half chunk
        n_chunk += 1
        for v in buf.values():
            v.clear()
        last = time.monotonic()

    for n, i in enumerate(todo):
        prompt = _prompt(hm.tokenizer, system, questions[i])
        for j in range(int(off[i]), min(int(off[i + 1]), int(off[i]) + chains)):
            toks = tok_vals[tok_off[j]:tok_off[j + 1]]
            ends = np.concatenate([[0], np.cumsum([len(t) for t in toks])])
            positions = np.asarray(pos_vals[pos_off[j]:pos_off[j + 1]], dtype=np.int64)
            char_ends = [int(ends[min(max(int(p), 0), len(toks))]) for p in positions]
            buf["question_id"].append(qids[i])
            buf["sample_id"].append(int(samples[j]))
            buf["probe_position"].append(positions.astype(np.int32).tolist())
            buf["hidden"].append(hm.hidden_at(prompt, str(texts[j] or ""), char_ends))
        if len(buf["question_id"]) >= 16 * chains or time.monotonic() - last > 60:
            flush()
        if progress:
            progress(len(done) + n + 1, len(qids))
    flush()
    return out


def load_hidden(path: Path) -> tuple[dict[str, Any], dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]]:
    """``(manifest, {(question_id, sample_id): (probe_positions, vectors float16 (P, H))})``."""
    import pyarrow.parquet as pq

    path = Path(path)
    man_path = path / "hidden.json"
    if not man_path.is_file():
        raise ConfigError(f"{path} has no hidden.json", hint="write one with stopwise hidden collect")
    manifest = json.loads(man_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{man_path}: field 'format' is {manifest.get('format')!r}, not {FORMAT!r}")
    h = int(manifest["hidden_size"])
    out: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for f in sorted((path / "chunks").glob("chunk-*.parquet")):
        t = pq.read_table(f)
        for q, s, pos, hid in zip(t.column("question_id").to_pylist(), t.column("sample_id").to_pylist(),
                                  t.column("probe_position").to_pylist(), t.column("hidden").chunks[0] if t.num_rows else []):
            vec = np.asarray(hid.values.flatten(), dtype=np.float16).reshape(-1, h) if len(pos) else np.zeros((0, h), np.float16)
            out[(q, int(s))] = (np.asarray(pos, dtype=np.int64), vec)
    return manifest, out


def hidden_comparison(ts, path: Path, *, pca: int = 32, folds: int = 5, seed: int = 0) -> dict[str, Any]:  # noqa: ANN001
    """Grouped-CV AUROC and log-loss of the learned-probe target from logprob features, hidden states, and both."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from stopwise.policies.base import MISSING
    from stopwise.policies.features import available_groups, set_features
    from stopwise.policies.learned import probe_labels
    from stopwise.policies.single import probe_arrays

    manifest, hidden = load_hidden(path)
    if manifest.get("source_content_hash") != ts.content_hash:
        raise ConfigError(f"{path} was collected from another version of '{manifest.get('source')}' (content hash differs)")
    pa_ = probe_arrays(ts)
    groups = tuple(g for g in ("probe", "probe_logprob", "token", "entropy") if g in available_groups(ts))
    X_lp = set_features(ts, pa_, groups)
    y_all = probe_labels(ts, pa_)
    qids = ts.questions.column("question_id").to_pylist()
    qi = np.asarray(ts.question_index, dtype=np.int64)
    samples = np.asarray(ts.column("sample_id"))
    rows, vecs = [], []
    for j in range(ts.n_chains):
        key = (qids[qi[j]], int(samples[j]))
        if key not in hidden:
            continue
        pos, vec = hidden[key]
        lo, hi = int(pa_.offsets[j]), int(pa_.offsets[j + 1])
        if hi - lo != len(pos) or not np.array_equal(np.asarray(pa_.position[lo:hi]), pos):
            raise ConfigError(f"hidden states of chain {key} do not line up with its probes")
        for k in range(lo, hi):
            if pa_.klass[k] != MISSING:
                rows.append(k)
                vecs.append(vec[k - lo])
    if len(rows) < 50:
        raise ConfigError(f"only {len(rows)} answered probes have hidden states; collect more chains")
    rows_a = np.asarray(rows)
    H = np.asarray(vecs, dtype=np.float32)
    X = X_lp[rows_a]
    y = y_all[rows_a].astype(int)
    g = qi[pa_.chain[rows_a]]
    if len(np.unique(y)) < 2:
        raise ConfigError("the target has one class on these probes")
    n_comp = min(pca, H.shape[1], max(2, len(np.unique(g)) - 1))

    def model(kind: str):  # noqa: ANN202
        from sklearn.compose import ColumnTransformer

        clf = LogisticRegression(C=1.0, max_iter=5000)
        if kind == "logprob":
            return make_pipeline(StandardScaler(), clf)
        if kind == "hidden":
            return make_pipeline(StandardScaler(), PCA(n_components=n_comp, random_state=seed), clf)
        n_lp = X.shape[1]
        ct = ColumnTransformer([("lp", StandardScaler(), list(range(n_lp))),
                                ("h", make_pipeline(StandardScaler(), PCA(n_components=n_comp, random_state=seed)),
                                 list(range(n_lp, n_lp + H.shape[1])))])
        return make_pipeline(ct, clf)

    data = {"logprob": np.nan_to_num(X), "hidden": H, "both": np.hstack([np.nan_to_num(X), H])}
    res: dict[str, Any] = {}
    preds: dict[str, np.ndarray] = {}
    cv = GroupKFold(n_splits=min(folds, len(np.unique(g))))
    for kind, Z in data.items():
        pred = np.zeros(len(y))
        for tr, te in cv.split(Z, y, g):
            m = model(kind).fit(Z[tr], y[tr])
            pred[te] = m.predict_proba(Z[te])[:, 1]
        preds[kind] = pred
        res[kind] = {"auroc": float(roc_auc_score(y, pred)), "log_loss": float(log_loss(y, np.clip(pred, 1e-6, 1 - 1e-6)))}
    # how sure is the difference? resample questions (the unit) with replacement, 1,000 times
    from stopwise.stats.ranking import auroc

    rng = np.random.default_rng(seed)
    uq = np.unique(g)
    rows_of = {q: np.flatnonzero(g == q) for q in uq}
    diffs: dict[str, list[float]] = {"hidden": [], "both": []}
    for _ in range(1000):
        idx = np.concatenate([rows_of[q] for q in rng.choice(uq, size=len(uq), replace=True)])
        if len(np.unique(y[idx])) < 2:
            continue
        base = auroc(preds["logprob"][idx], y[idx].astype(bool))
        for kind in diffs:
            diffs[kind].append(auroc(preds[kind][idx], y[idx].astype(bool)) - base)
    for kind, d in diffs.items():
        lo, hi = np.percentile(d, [2.5, 97.5]) if d else (float("nan"), float("nan"))
        res[kind]["auroc_gain_over_logprob_95ci"] = [float(lo), float(hi)]
    return {
        "trace_set": ts.name, "hidden": str(path), "hidden_manifest": manifest, "layer": manifest["layer"], "hidden_size": manifest["hidden_size"],
        "pca_components": n_comp, "probes": int(len(y)), "questions": int(len(np.unique(g))), "chains_per_question": manifest["chains"],
        "positive_share": float(y.mean()), "feature_groups": list(groups), "folds": cv.get_n_splits(), "results": res,
        "target": "the probe's answer is the chain's final answer (answered probes only)",
    }
