"""Execute the notebooks and keep their outputs, so they read well where no kernel runs.

GitHub and nbviewer show a committed notebook's outputs but run nothing:
widget views (sliders, live plots) come out blank, and plotly's interactive
output needs JavaScript they do not run. ``python3 run.py publish`` therefore
executes every notebook top to bottom under the ``cpu`` preset with

* ``WORKBENCH_STATIC_FIGURES=1``: live widgets also leave a static figure
  behind (see ``workbench.viz.widgets``);
* ``WORKBENCH_TRAINING_CACHE=off``: every model is trained for real (the wall times printed are a
  student's first run);
* ``PLOTLY_RENDERER=plotly_mimetype+png``: every figure carries both plotly's
  JSON (interactive in JupyterLab) and a PNG (shown by GitHub), rendered by
  kaleido with a local Chromium (``BROWSER_PATH``);

then drops what only a live kernel can show (widget views and their saved
state, which would add megabytes of plotly.js) and writes the notebook back.
The wall time of each notebook is printed: the ``cpu`` preset promises at
most about 5 minutes per notebook on a 2-core laptop.

CI never runs this: nbval executes the notebooks under the ``ci`` preset and,
with ``--nbval-lax``, compares only cells marked ``# NBVAL_CHECK_OUTPUT``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "widgets"  # notebook metadata key where JupyterLab saves widget state
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

PUBLISH_ENV = {
    "WORKBENCH_STATIC_FIGURES": "1",
    "PLOTLY_RENDERER": "plotly_mimetype+png",
    "TQDM_DISABLE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "PYTHONHASHSEED": "0",
    "WORKBENCH_TRAINING_CACHE": "off",  # committed outputs come from real training runs, not from a cache
}


def strip_live_outputs(notebook) -> int:
    """Remove widget views and saved widget state from a notebook (in place); return how many outputs went.

    A widget's output bundle holds the view reference and a text repr such as
    ``VBox(children=...)``: meaningless without a kernel, so the whole output goes.
    """
    removed = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = [out for out in cell.get("outputs", []) if WIDGET_VIEW not in out.get("data", {})]
        removed += len(cell.get("outputs", [])) - len(kept)
        cell["outputs"] = kept
    notebook.metadata.pop(WIDGET_STATE, None)
    return removed


def find_browser() -> str:
    """The Chromium kaleido renders with: $BROWSER_PATH, else the first of BROWSERS on PATH."""
    path = os.environ.get("BROWSER_PATH") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not path:
        raise SystemExit(
            "publish renders figures to PNG with kaleido, which needs Chrome or Chromium: none was found "
            f"(looked for $BROWSER_PATH and {', '.join(BROWSERS)} on PATH). Install one, e.g. "
            "`apt install chromium`, or set BROWSER_PATH=/path/to/chrome"
        )
    return path


def execute(path: Path, preset: str = "cpu", timeout_s: int = 1200):
    """Run one notebook top to bottom in a fresh kernel (cwd = its folder); return (notebook, seconds)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    os.environ["WORKBENCH_PRESET"] = preset  # the kernel inherits this process's environment
    client = NotebookClient(notebook, timeout=timeout_s, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to publish (default: all in notebooks/)")
    parser.add_argument("--preset", default="cpu", help="preset the committed outputs come from (default: cpu)")
    args = parser.parse_args(argv)
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise SystemExit("publish needs kaleido to render figures: `pip install -c constraints.txt kaleido` "
                         "(python3 run.py publish installs it)") from None
    os.environ.setdefault("BROWSER_PATH", find_browser())
    os.environ.update(PUBLISH_ENV)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")

    import nbformat

    timings = []
    for path in paths:
        print(f"executing {path.name} (preset {args.preset}) ...", flush=True)
        notebook, seconds = execute(path, args.preset)
        removed = strip_live_outputs(notebook)
        nbformat.write(notebook, path)
        timings.append((path.name, seconds))
        print(f"  {seconds:6.1f} s, {removed} widget outputs dropped, {path.stat().st_size / 1e3:,.0f} kB written",
              flush=True)
    print("\nwall time per notebook (preset %s, %s):" % (args.preset, f"{os.cpu_count()} cores"))
    for name, seconds in timings:
        print(f"  {name:<32} {seconds:6.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
