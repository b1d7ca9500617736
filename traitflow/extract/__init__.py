"""Extraction: positions, layers, activation capture, vector methods, evaluation."""
