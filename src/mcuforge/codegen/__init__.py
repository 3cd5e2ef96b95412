"""C code generation: memory planning, model.c/model.h emission, build files, reports."""

from .emit import generate
from .planner import MemoryPlan, plan_memory

__all__ = ["MemoryPlan", "generate", "plan_memory"]
