"""Pretraining objectives, one file each, all behind one interface (see base.py)."""
from .base import (IGNORE, OBJECTIVES, Corruption, Objective, ObjectiveOutput, make_objective, objective_from_dict,
                   option_types)
from .causal_lm import CausalLM
from .electra import Electra
from .masked_diffusion import MaskedDiffusion
from .masked_lm import MaskedLM
from .meap import MEAP
from .prefix_lm import PrefixLM, prefix_lm_generate
from .span_corruption import T5SpanCorruption
from .two_phase import TwoPhase

__all__ = ["OBJECTIVES", "IGNORE", "Corruption", "Objective", "ObjectiveOutput", "make_objective",
           "objective_from_dict", "option_types", "CausalLM", "Electra", "MaskedDiffusion", "MaskedLM", "MEAP",
           "PrefixLM", "prefix_lm_generate", "T5SpanCorruption", "TwoPhase"]
