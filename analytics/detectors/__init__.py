"""Detectors: pure Polars rules that turn readings and consumption into explainable findings.

Each `detect_<x>(readings, consumption, meters, *, params, weather=None)` returns a frame in
`analytics.frames.FINDINGS_SCHEMA`: one row per detected condition, with its evidence (the
values, the baseline, the rule and its parameters) and a severity. Shared helpers live in
`analytics.detectors.common`.
"""
