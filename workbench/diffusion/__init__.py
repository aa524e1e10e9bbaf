"""Masked diffusion language models beyond the training objective (``objectives/masked_diffusion.py``):

* ``elbo.py``      the NELBO as a metric (Monte Carlo with a standard error; exact by enumeration for
                   short sequences; the any-order autoregressive average) and scoring candidate answers;
* ``sampling.py``  MDLM's ancestral sampler, LLaDA's low-confidence and random remasking with
                   semi-autoregressive blocks; generation from a prompt and infilling;
* ``compare.py``   autoregression against diffusion at equal training compute.
"""
from .elbo import (NELBOEstimate, answer_log_likelihood, any_order_nll, choose_answer, exact_nelbo, model_denoiser,
                   nelbo)
from .sampling import SAMPLERS, DenoisingTrace, generate, infill, low_confidence_step, sample, transfer_schedule

__all__ = ["NELBOEstimate", "answer_log_likelihood", "any_order_nll", "choose_answer", "exact_nelbo",
           "model_denoiser", "nelbo", "SAMPLERS", "DenoisingTrace", "generate", "infill", "low_confidence_step",
           "sample", "transfer_schedule"]
