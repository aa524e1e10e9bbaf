"""nbval settings for the notebooks: a notebook that runs correctly passes however slow the machine is.

nbval runs a cell in two phases (nbval/plugin.py, IPyNbCell.runtest):

1. it blocks on the shell channel until the kernel's execute_reply, for at most
   the cell timeout (--nbval-cell-timeout; run.py passes 600 s), reading nothing else;
2. only then it reads the cell's outputs from the iopub channel until the
   kernel's 'idle' status, allowing a fixed gap between messages (hard-coded 5 s,
   nbval issues #136, #231), and fails with "Timeout of N seconds exceeded waiting
   for output" when the gap runs out.

During phase 1 every iopub message of the cell piles up unread. ZeroMQ keeps only
so many (the kernel's PUB and our SUB socket hold 1000 messages each, plus what
fits in the TCP buffers): past that it silently drops new ones, the final 'idle'
included, and phase 2 then waits for a message that never comes. Any gap fails.
The same bug in nbconvert: jupyter/nbconvert#659, fixed there by reading iopub
while waiting for the reply (jupyter/nbconvert#994, now nbclient).

Training cells hit it because their tqdm progress bars are widgets: every step
sends 2-4 comm messages, and more the longer a step takes (tqdm also refreshes
every 0.1 s), so the slower the machine, the more messages; a backlog also slows
the kernel itself (the same loop ran 2.6x fewer steps in 20 s). Notebook 03's
training cell sent ~3,700 in fast runs here; a 90 s cell of bars lost its 'idle'
after 6,486 and 7,986 delivered messages and failed exactly as reported.
`python3 run.py test` sets TQDM_DISABLE=1, so it never sent them (OMP_NUM_THREADS=1
is not what saved it).

So, with three small patches:

* while waiting for the reply, move every waiting iopub message into a buffer,
  so ZeroMQ never has a backlog to drop from (what nbconvert/nbclient do);
* iopub reads take from that buffer first;
* the wait for outputs after the reply is not a fixed gap: it lasts as long as the
  cell timeout (the hang guard), and fails at once if the kernel died. Only when
  the cell itself timed out (nbval then interrupts the kernel) the gap stays short,
  so that a hung kernel is not waited for twice.
"""
import collections
import time
from queue import Empty

import nbval.kernel
import nbval.plugin

INTERRUPT_GRACE_S = 60  # after a cell timeout: how long to wait for the interrupted cell's traceback
POLL_S = 0.5  # how often a long wait checks that the kernel is alive (and drains iopub)

# nbval's own methods; `nbval_original` keeps a second import of this file from wrapping the wrappers
_nbval_get_message = getattr(nbval.kernel.RunningKernel.get_message, "nbval_original",
                             nbval.kernel.RunningKernel.get_message)
_nbval_await_reply = getattr(nbval.kernel.RunningKernel.await_reply, "nbval_original",
                             nbval.kernel.RunningKernel.await_reply)


def _iopub_buffer(kernel) -> collections.deque:
    try:
        return kernel._workbench_iopub_buffer
    except AttributeError:
        kernel._workbench_iopub_buffer = collections.deque()
        return kernel._workbench_iopub_buffer


def _drain_iopub(kernel) -> None:
    """Move every iopub message that has arrived into the buffer (never waits)."""
    buffer = _iopub_buffer(kernel)
    while True:
        try:
            buffer.append(kernel.kc.get_iopub_msg(timeout=0))
        except Empty:
            return


def _get_message(self, stream, timeout=None):
    """nbval's get_message: iopub from the buffer first; waits in slices, stopping early if the kernel died."""
    if stream == "iopub":
        buffer = _iopub_buffer(self)
        if buffer:
            return buffer.popleft()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        try:
            return _nbval_get_message(self, stream, timeout=max(wait, 0))
        except Empty:
            if (deadline is not None and time.monotonic() >= deadline) or not self.is_alive():
                raise


def _await_reply(self, msg_id, timeout=None):
    """nbval's await_reply (execute_reply within `timeout` s, else Empty), draining iopub meanwhile."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        _drain_iopub(self)
        wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if wait <= 0:
            raise Empty
        try:
            msg = self.kc.get_shell_msg(timeout=wait)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            if msg["content"]["status"] == "aborted":
                raise RuntimeError("Kernel aborted execution request")  # as nbval
            _drain_iopub(self)
            return


def _output_timeout(cell) -> float:
    """The wait for the next output message: the cell timeout, or a short grace after a cell timeout."""
    if cell.parent.timed_out:
        return INTERRUPT_GRACE_S
    return float(cell.config.option.nbval_cell_timeout)


_get_message.nbval_original = _nbval_get_message
_await_reply.nbval_original = _nbval_await_reply
nbval.kernel.RunningKernel.get_message = _get_message
nbval.kernel.RunningKernel.await_reply = _await_reply
# nbval sets `self.output_timeout = 5` in IPyNbCell.__init__; the setter ignores it
nbval.plugin.IPyNbCell.output_timeout = property(_output_timeout, lambda cell, value: None)
