"""Evaluation: official metric definitions, held-out benchmarks, per-type reports against baselines."""
