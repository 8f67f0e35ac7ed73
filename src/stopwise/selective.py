"""Selective answering: which confidence score tells right from wrong, and the certified abstention threshold.

Per question, the answer is the majority answer of its chains, and a score says
how sure we are of it. Four scores are available:

``vote_share``        share of the chains giving the majority answer;
``vote_margin``       that share minus the runner-up's share;
``probe_agreement``   share of the probes (with an answer) of the majority answer's chains that already gave it;
``probe_confidence``  mean forced-answer probability of those probes (sets whose probes carry logprobs).

For each score the module reports, on the test half:

- the AUROC for telling right answers from wrong ones;
- the risk-coverage curve;
- the certified rule "answer only when the score reaches t", with t chosen on
  the calibration half.

The rule's threshold comes from Learn-then-Test on the selective risk (error
among answered questions <= epsilon with probability >= 1 - delta; the
binomial p-value on the answered questions, thresholds tested from the most
abstaining down, skipping those that answer too few calibration questions to
ever pass: that choice uses the scores only, never the labels). Coverage is
the share of questions answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stopwise.calibrate import calibrate_losses
from stopwise.conformal import SCORES, question_scores
from stopwise.errors import ConfigError
from stopwise.stats.ranking import auroc
from stopwise.stats.split import split_mask

__all__ = ["SCORES", "question_scores", "selective_report"]


def selective_report(ts, *, epsilon: float = 0.05, delta: float = 0.1, points: int = 21) -> list[dict[str, Any]]:  # noqa: ANN001
    """One row per score: AUROC, risk-coverage curve and the certified threshold, on the test half."""
    if not ts.has("correct"):
        raise ConfigError(f"trace set '{ts.name}' has no labels (correct); selective answering needs them")
    scores, wrong = question_scores(ts)
    cal = split_mask(ts.questions.column("question_id").to_pylist())
    test = ~cal
    rows = []
    for name, s in scores.items():
        # thresholds ascending: column 0 answers (nearly) everything, the last one only the most confident;
        # calibrate_losses tests from the last column towards the first and returns the least abstaining it certifies
        grid = np.unique(np.quantile(s[cal], np.linspace(0, 1, points))) if cal.any() else np.zeros(1)
        # a threshold answering fewer than n_min calibration questions could not be certified even with no error
        # (binomial tail (1 - eps)^n > delta): leave it out of the sequence. This looks at scores, never at labels.
        n_min = int(np.ceil(np.log(delta) / np.log(1.0 - epsilon)))
        enough = (s[cal][:, None] >= grid[None, :]).sum(axis=0) >= n_min
        grid = grid[enough] if enough.any() else grid[:1]
        answered = s[:, None] >= grid[None, :]
        losses = (answered & wrong[:, None]).astype(np.float64)
        j, _, _, _ = calibrate_losses(losses[cal], risk="selective", epsilon=epsilon, delta=delta,
                                      method="binomial", answered=answered[cal])
        ans_t = answered[test]
        cov = ans_t.mean(axis=0)
        risk = np.where(ans_t.sum(axis=0) > 0, (ans_t & wrong[test][:, None]).sum(axis=0) / np.maximum(ans_t.sum(axis=0), 1), 0.0)
        rows.append({
            "trace_set": ts.name, "score": name, "auroc": auroc(s[test], ~wrong[test]), "epsilon": epsilon, "delta": delta,
            "certified": j is not None, "threshold": None if j is None else float(grid[j]),
            "coverage": 0.0 if j is None else float(cov[j]), "selective_risk": 0.0 if j is None else float(risk[j]),
            "error_all": float(wrong[test].mean()) if test.any() else float("nan"),
            "curve": {"coverage": cov.tolist(), "risk": risk.tolist()},
            "n_calibration": int(cal.sum()), "n_test": int(test.sum()),
        })
    return rows
