"""Collect a real trace set from a model: chains with logprobs and forced-answer probes.

:func:`collect` runs the embedded llama.cpp engine (:mod:`stopwise.backends.llamacpp`)
over a question set, many chains at once (several questions share a batch to
keep it full), with probes every ``probe_every`` tokens and at cue tokens.

Resumable: finished chains go to durable chunk files in ``<out>.collect/chunks``
(each written to a temporary name, fsynced and renamed); a second run with the
same settings reads them, skips the chains they hold and collects only the rest,
so a killed run loses only the chains that were in flight and duplicates nothing.
When every chain is done the trace set is assembled (answers clustered once) and
written atomically to ``<out>``; :func:`assemble` can also write the questions
completed so far.

Each chain's random stream is seeded from ``(seed, question_id, sample_id)``, so a
chain is the same whichever run, batch or order produced it.
"""

from stopwise.collect.chains import CollectConfig, _Live, _record, chain_seed
from stopwise.collect.http import is_http
from stopwise.collect.run import (
    assemble,
    check_assemble_settings,
    collect,
    collection_status,
)
from stopwise.collect.state import (
    _open_state,
    compact_chunks,
    questions_fingerprint,
    read_chunks,
    seed_chunks,
)

__all__ = [
    "CollectConfig", "_Live", "_open_state", "_record", "assemble", "chain_seed", "check_assemble_settings", "collect",
    "collection_status", "compact_chunks", "is_http", "questions_fingerprint", "read_chunks", "seed_chunks",
]

