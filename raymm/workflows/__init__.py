"""Orchestration above the stages: the quickstart pipeline and the ablation experiment."""
