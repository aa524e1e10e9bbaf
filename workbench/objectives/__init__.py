"""Pretraining objectives, one file each, all behind one interface (see base.py)."""
from .base import OBJECTIVES, Objective, ObjectiveOutput, make_objective
from .causal_lm import CausalLM

__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "make_objective", "CausalLM"]
