"""Evaluation harness: datasets, metrics, coarse masks, click simulation and benchmarks."""
