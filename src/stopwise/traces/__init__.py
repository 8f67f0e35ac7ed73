"""Trace sets: the columnar data model, its Parquet storage, importers and summaries."""

from stopwise.traces.io import read_trace_set, write_trace_set
from stopwise.traces.model import Provenance, Question, TraceSet, build_trace_set
from stopwise.traces.schema import MISSING, SCHEMA_VERSION

__all__ = [
    "MISSING",
    "SCHEMA_VERSION",
    "Provenance",
    "Question",
    "TraceSet",
    "build_trace_set",
    "read_trace_set",
    "write_trace_set",
]
