"""nbval settings for the notebooks.

nbval waits at most 5 s (hard-coded, no flag: nbval issues #136, #231) for a
cell's outputs to arrive after the cell finished. On a busy 2-core CI machine
the kernel's output messages can take longer than that, which fails a
notebook that actually ran fine. Give them a minute.
"""
import nbval.plugin

OUTPUT_TIMEOUT_S = 60
_original_init = nbval.plugin.IPyNbCell.__init__


def _init_with_longer_output_timeout(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    self.output_timeout = OUTPUT_TIMEOUT_S


nbval.plugin.IPyNbCell.__init__ = _init_with_longer_output_timeout
