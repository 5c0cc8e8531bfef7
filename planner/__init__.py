"""Pure estimation: model architectures, the GPU catalogue, memory, speed, cost and the
recommendation. No torch, no I/O but reading a model's config.json."""

from planner.arch import ModelSpec, load_model
from planner.core import MethodPlan, PlanReport, PlanRequest, RentOption, plan
from planner.errors import PlanError
from planner.from_preset import request_from_preset
from planner.gpus import GpuSpec, find_gpu, gpu_catalogue
from planner.request import request_fields

__all__ = [
    "GpuSpec",
    "MethodPlan",
    "ModelSpec",
    "PlanError",
    "PlanReport",
    "PlanRequest",
    "RentOption",
    "find_gpu",
    "gpu_catalogue",
    "load_model",
    "plan",
    "request_fields",
    "request_from_preset",
]
