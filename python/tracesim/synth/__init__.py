"""Trace synthesis from a model description and a parallelism plan (docs/synth.md)."""

from tracesim.synth.infer import RequestTraceError, read_requests, serving_metrics, synth_infer
from tracesim.synth.models import ModelConfigError, ModelSpec, load_model, zoo_names
from tracesim.synth.train import PlanError, analytic_flops, synth_train

__all__ = [
    "ModelConfigError",
    "ModelSpec",
    "PlanError",
    "RequestTraceError",
    "analytic_flops",
    "load_model",
    "read_requests",
    "serving_metrics",
    "synth_infer",
    "synth_train",
    "zoo_names",
]
