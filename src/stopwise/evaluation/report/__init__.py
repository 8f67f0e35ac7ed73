"""Summaries, tables and HTML reports over trace sets and replay results."""
