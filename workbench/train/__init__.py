"""Training: the one Trainer, its schedule, callbacks and checkpoints."""
from .cache import cached_fit
from .callbacks import Callback, PrintLogger
from .checkpoint import CheckpointError, load_model, save_model
from .schedule import warmup_cosine
from .trainer import BrokenUpdateError, NonFiniteLossError, Trainer

__all__ = ["cached_fit", "Callback", "PrintLogger", "CheckpointError", "load_model", "save_model", "warmup_cosine",
           "BrokenUpdateError", "NonFiniteLossError", "Trainer"]
