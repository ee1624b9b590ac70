"""Metrics: SR quality, classification report, feature-based generative metrics."""
