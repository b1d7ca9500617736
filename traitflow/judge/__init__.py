"""Judges: score answers for a trait (0-100) and for coherence (0-100).

``keywords`` (no model, no network) lives in :mod:`traitflow.judge.keywords`.
"""
