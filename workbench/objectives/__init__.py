"""Pretraining objectives, one file each, all behind one interface (see base.py)."""
from .base import (IGNORE, OBJECTIVES, Corruption, Objective, ObjectiveOutput, make_objective, objective_from_dict,
                   option_types)
from .causal_lm import CausalLM

__all__ = ["OBJECTIVES", "IGNORE", "Corruption", "Objective", "ObjectiveOutput", "make_objective",
           "objective_from_dict", "option_types", "CausalLM"]
