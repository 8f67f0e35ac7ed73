"""Policy families by name: ``name -> "module:Class"``, imported on first use.

Examples
--------
>>> from stopwise.policies.registry import get_family, family_names
>>> get_family("answer_convergence").name
'answer_convergence'
>>> "token_budget" in family_names("single")
True
"""

from __future__ import annotations

import importlib

from stopwise.errors import ConfigError, UnknownNameError

__all__ = ["FAMILIES", "FAMILY_KINDS", "family_class", "family_names", "get_family", "prepare_family"]

FAMILIES: dict[str, str] = {
    # single chain (early exit)
    "token_budget": "stopwise.policies.single:TokenBudget",
    "first_candidate": "stopwise.policies.single:FirstCandidate",
    "answer_convergence": "stopwise.policies.single:AnswerConvergence",
    "probe_confidence": "stopwise.policies.single:ProbeConfidence",
    "learned_exit": "stopwise.policies.learned:LearnedExit",
    "entropy_monitor": "stopwise.policies.monitors:EntropyMonitor",
    # many chains
    "majority_vote": "stopwise.policies.multi:MajorityVote",
    "adaptive_consistency": "stopwise.policies.multi:AdaptiveConsistency",
    "eprocess_vote": "stopwise.policies.eprocess:EProcessVote",
    "combined": "stopwise.policies.combined:CombinedExit",
    "esc": "stopwise.policies.multi:ESC",
    "first_finish": "stopwise.policies.multi:FirstFinish",
    "deepconf_online": "stopwise.policies.deepconf:DeepConfOnline",
    "vote_margin_abstain": "stopwise.policies.multi:VoteMarginAbstain",
}

# Kept here so that listing by kind imports nothing; a test checks it against the classes.
FAMILY_KINDS: dict[str, str] = {
    "token_budget": "single",
    "first_candidate": "single",
    "answer_convergence": "single",
    "probe_confidence": "single",
    "learned_exit": "single",
    "entropy_monitor": "single",
    "majority_vote": "multi",
    "adaptive_consistency": "multi",
    "eprocess_vote": "multi",
    "combined": "multi",
    "esc": "multi",
    "first_finish": "multi",
    "deepconf_online": "multi",
    "vote_margin_abstain": "multi",
}


def family_names(kind: str | None = None) -> list[str]:
    """Registered family names, in registration order; only those of ``kind`` ("single"/"multi") if given."""
    if kind is not None and kind not in ("single", "multi"):
        raise UnknownNameError("family kind", kind, ["single", "multi"])
    return [n for n in FAMILIES if kind is None or FAMILY_KINDS.get(n) == kind]


def family_class(name: str) -> type:
    """The class registered under ``name`` (imported now).

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered; the message lists the valid names.
    """
    if name not in FAMILIES:
        raise UnknownNameError("policy family", name, FAMILIES)
    module, _, attr = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def get_family(name: str, **settings) -> "Family":  # noqa: F821, ANN003
    """Build the family registered under ``name`` with its fixed ``settings``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered.
    ConfigError
        If a setting is not accepted by the family.
    """
    cls = family_class(name)
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ConfigError(f"bad settings for policy family '{name}': {exc}", hint=f"settings given: {sorted(settings)}") from exc


def prepare_family(name: str, ts, **settings) -> "Family":  # noqa: F821, ANN001, ANN003
    """The family ``name`` ready to replay on trace set ``ts``: fitted to its shape, then trained.

    Training (for families that learn, e.g. ``learned_exit`` without a model in
    its settings) uses only the training role of ``ts``; the family's
    ``training_mask(ts)`` names those questions so callers leave them out of
    calibration.
    """
    return get_family(name, **settings).fit_to(ts).train(ts)
