"""notebooks/conftest.py's nbval patch, against a fake kernel in virtual time (no kernel is started).

The fake models what fails on a real one (see that file's docstring): iopub holds at most `capacity` unread
messages and silently drops the rest, as ZeroMQ does, so a cell whose outputs pile up unread while nbval
waits for the execute_reply loses its final 'idle' status.
"""
import collections
import importlib.util
import math
import types
from pathlib import Path
from queue import Empty

import pytest

nbval_kernel = pytest.importorskip("nbval.kernel")
nbval_plugin = pytest.importorskip("nbval.plugin")

ROOT = Path(__file__).resolve().parents[1]
MSG_ID = "cell-1"


@pytest.fixture(scope="module")
def patch():
    """Import notebooks/conftest.py (it patches nbval) and undo its patches afterwards."""
    saved = {(cls, name): cls.__dict__.get(name) for cls, name in (
        (nbval_kernel.RunningKernel, "get_message"), (nbval_kernel.RunningKernel, "await_reply"),
        (nbval_plugin.IPyNbCell, "output_timeout"))}
    spec = importlib.util.spec_from_file_location("workbench_notebooks_conftest", ROOT / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    for (cls, name), value in saved.items():
        if value is None:
            delattr(cls, name)
        else:
            setattr(cls, name, value)


class Clock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


def _message(msg_type, **content):
    return {"msg_type": msg_type, "parent_header": {"msg_id": MSG_ID}, "header": {"msg_type": msg_type},
            "content": content, "metadata": {}}


class FakeKernelClient:
    """One cell in virtual time: `outputs` stream messages spread over `runtime` s, then the execute_reply on
    shell and, `idle_delay` s later, the 'idle' status on iopub. Waiting advances the clock."""

    def __init__(self, clock, runtime, outputs, capacity=math.inf, idle_delay=0.0):
        self.clock, self.runtime, self.capacity = clock, runtime, capacity
        schedule = [(runtime * (i + 1) / (outputs + 1), _message("stream", name="stdout", text=f"{i}\n"))
                    for i in range(outputs)]
        schedule.append((runtime + idle_delay, _message("status", execution_state="idle")))
        self.unsent = collections.deque(schedule)
        self.iopub = collections.deque()
        self.dropped = 0
        self.replied = False

    def _advance(self, until):
        while self.unsent and self.unsent[0][0] <= until:
            _, msg = self.unsent.popleft()
            if len(self.iopub) >= self.capacity:
                self.dropped += 1  # ZeroMQ's high-water mark: gone, silently
            else:
                self.iopub.append(msg)
        self.clock.now = max(self.clock.now, until)

    def get_iopub_msg(self, timeout=None):
        if not self.iopub:
            next_at = self.unsent[0][0] if self.unsent else math.inf
            self._advance(min(self.clock.now + (math.inf if timeout is None else timeout), next_at))
        if self.iopub:
            return self.iopub.popleft()
        raise Empty

    def get_shell_msg(self, timeout=None):
        until = self.clock.now + (math.inf if timeout is None else timeout)
        if not self.replied and until >= self.runtime:
            self._advance(self.runtime)
            self.replied = True
            return _message("execute_reply", status="ok")
        self._advance(until)
        raise Empty


class FakeManager:
    def __init__(self):
        self.alive = True

    def is_alive(self):
        return self.alive


def _kernel(patch, client, patched=True):
    """A RunningKernel (not started) on the fake client, with the patched or nbval's own methods."""
    methods = (dict(get_message=patch._get_message, await_reply=patch._await_reply) if patched else
               dict(get_message=patch._nbval_get_message, await_reply=patch._nbval_await_reply))
    kernel = object.__new__(type("Kernel", (nbval_kernel.RunningKernel,), methods))
    kernel.kc, kernel.km = client, FakeManager()
    return kernel


def _run_cell(kernel, cell_timeout, output_timeout):
    """What nbval's IPyNbCell.runtest does: await the reply, then read iopub until 'idle' (Empty = failure)."""
    kernel.await_reply(MSG_ID, timeout=cell_timeout)
    outputs = []
    while True:
        msg = kernel.get_message("iopub", timeout=output_timeout)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return outputs
        outputs.append(msg["content"]["text"])


@pytest.fixture
def clock(patch, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(patch, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_outputs_that_pile_up_during_a_long_cell_are_not_lost(patch, clock):
    # control: nbval as is, a 300 s cell with 3000 outputs, room for 1000 unread: the 'idle' is dropped
    client = FakeKernelClient(clock, runtime=300, outputs=3000, capacity=1000)
    with pytest.raises(Empty):
        _run_cell(_kernel(patch, client, patched=False), cell_timeout=600, output_timeout=60)
    assert client.dropped > 0
    # patched: iopub is drained while waiting for the reply, nothing is dropped, every output arrives in order
    clock.now = 0.0
    client = FakeKernelClient(clock, runtime=300, outputs=3000, capacity=1000)
    outputs = _run_cell(_kernel(patch, client), cell_timeout=600, output_timeout=60)
    assert client.dropped == 0
    assert outputs == [f"{i}\n" for i in range(3000)]


def test_slow_outputs_are_waited_for_up_to_the_cell_timeout(patch, clock):
    # the 'idle' comes 100 s after the reply: past any fixed gap nbval (5 s) or this repo (60 s) used
    client = FakeKernelClient(clock, runtime=1, outputs=2, idle_delay=100)
    with pytest.raises(Empty):
        _run_cell(_kernel(patch, client), cell_timeout=600, output_timeout=60)
    clock.now = 0.0
    client = FakeKernelClient(clock, runtime=1, outputs=2, idle_delay=100)
    assert _run_cell(_kernel(patch, client), cell_timeout=600, output_timeout=600) == ["0\n", "1\n"]


def test_output_timeout_is_the_cell_timeout_unless_the_cell_timed_out(patch):
    class Cell:  # an IPyNbCell's output_timeout without pytest's node machinery
        output_timeout = nbval_plugin.IPyNbCell.__dict__["output_timeout"]

    cell = Cell()
    cell.parent = types.SimpleNamespace(timed_out=False)
    cell.config = types.SimpleNamespace(option=types.SimpleNamespace(nbval_cell_timeout=600.0))
    cell.output_timeout = 5  # what nbval's __init__ does: ignored
    assert cell.output_timeout == 600.0
    cell.parent.timed_out = True  # nbval interrupted the kernel: a short grace for its traceback
    assert cell.output_timeout == patch.INTERRUPT_GRACE_S


def test_a_dead_kernel_fails_at_once_not_after_the_cell_timeout(patch, clock):
    client = FakeKernelClient(clock, runtime=1, outputs=0, idle_delay=math.inf)  # the 'idle' never comes
    kernel = _kernel(patch, client)
    kernel.await_reply(MSG_ID, timeout=600)
    kernel.km.alive = False
    with pytest.raises(Empty):
        kernel.get_message("iopub", timeout=600)
    assert clock.now <= 1 + patch.POLL_S


def test_a_hung_cell_still_times_out(patch, clock):
    client = FakeKernelClient(clock, runtime=700, outputs=5)  # outputs at 117, 233, ... 583 s
    kernel = _kernel(patch, client)
    with pytest.raises(Empty):
        kernel.await_reply(MSG_ID, timeout=600)
    assert 600 <= clock.now <= 600 + patch.POLL_S
    # the outputs that came before the timeout are kept for nbval's report
    assert [kernel.get_message("iopub", timeout=1)["content"]["text"] for _ in range(5)] == \
        [f"{i}\n" for i in range(5)]


def test_a_second_import_does_not_wrap_the_wrappers(patch):
    assert nbval_kernel.RunningKernel.get_message.nbval_original is patch._nbval_get_message
    assert nbval_kernel.RunningKernel.await_reply.nbval_original is patch._nbval_await_reply
    assert not hasattr(patch._nbval_get_message, "nbval_original")
