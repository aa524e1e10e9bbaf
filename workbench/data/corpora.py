"""Raw text to train on, named by a short spec string, offline by default.

A classroom may have no internet, so every default here works without it:

    load_text("stories")            synthetic children's stories whose entropy
                                    rate is known exactly (see ``stories.py``)
    load_text("pydoc")              about 465k characters of English prose: the
                                    Python documentation topics that ship with
                                    Python itself (``pydoc_data.topics``)
    load_text("file:notes.txt")     a local UTF-8 text file
    load_text("notes.txt")          the same, for a path that exists
    load_text("hf:roneneldan/TinyStories")
    load_text("hf:wikitext:wikitext-2-raw-v1")
                                    a Hugging Face hub dataset's "text" column
                                    (needs internet, or the local HF cache)

``n_chars`` sets how much story text to sample (default 200,000) and caps the
length of every other source. The hub path fails fast when offline, with a
``DataUnavailableError`` that names the offline alternatives, instead of
retrying for half a minute.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from workbench.validation import check_int

DEFAULT_STORY_CHARS = 200_000
SPEC_FORMS = (
    "'stories', 'pydoc', 'file:PATH' (or a path to an existing file), "
    "'hf:DATASET' or 'hf:DATASET:CONFIG'"
)
OFFLINE_ALTERNATIVES = "'stories', 'pydoc' or 'file:PATH'"


class DataUnavailableError(RuntimeError):
    """A text source cannot be reached (usually: the hub, while offline)."""


def load_text(spec: str, *, n_chars: int | None = None, seed: int = 0) -> str:
    """The text named by ``spec``; see the module docstring for the forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"load_text needs a text spec, one of {SPEC_FORMS}; got {spec!r}")
    if n_chars is not None:
        check_int("load_text", "n_chars", n_chars)
    check_int("load_text", "seed", seed, minimum=0)

    if spec == "stories":
        from workbench.data.stories import default_story_source

        return default_story_source().sample(n_chars or DEFAULT_STORY_CHARS, seed=seed)
    if spec == "pydoc":
        text = python_docs_text()
    elif spec.startswith("hf:"):
        return hub_text(spec[len("hf:"):], n_chars=n_chars)
    elif spec.startswith("file:"):
        if not spec[len("file:"):].strip():
            raise ValueError("'file:' names no file; write 'file:PATH', e.g. 'file:notes.txt'")
        text = read_text_file(spec[len("file:"):])
    elif Path(spec).exists():
        text = read_text_file(spec)
    elif "/" in spec or "\\" in spec or Path(spec).suffix:
        raise FileNotFoundError(
            f"no file at '{spec}'; check the path, or use one of the built-in sources "
            f"{SPEC_FORMS}"
        )
    else:
        raise ValueError(f"unknown text source {spec!r}; use one of {SPEC_FORMS}")
    return text[:n_chars] if n_chars else text


def python_docs_text() -> str:
    """The prose of Python's own documentation topics, which ships with Python."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip() for key in sorted(topics))


def read_text_file(path) -> str:
    """A local UTF-8 text file, with one clear error for each way it can fail."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no file at '{path}'; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise ValueError(f"'{path}' is a directory; pass a text file inside it")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"'{path}' is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`, "
            "or make sure it is a text file and not a binary one"
        ) from None
    if not text.strip():
        raise ValueError(f"the file '{path}' is empty (or only whitespace); put some text in it")
    return text


# -- the Hugging Face hub ---------------------------------------------------

def hub_text(name: str, *, n_chars: int | None = None) -> str:
    """The "text" column of a hub dataset's train split, joined by newlines.

    ``name`` is ``"DATASET"`` or ``"DATASET:CONFIG"``. Rows are joined until
    ``n_chars`` characters are collected (all rows if ``n_chars`` is None).
    """
    dataset, _, config = name.partition(":")
    if not dataset:
        raise ValueError(f"'hf:{name}' names no dataset; write 'hf:DATASET' or 'hf:DATASET:CONFIG'")
    spec = f"hf:{name}"
    if hub_offline():
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            # HF_HUB_OFFLINE was set after the HF libraries were imported, so
            # they would still try the network: stop here.
            raise _unavailable(spec, "HF_HUB_OFFLINE is set, so the hub is not contacted")
        # Otherwise the libraries read only their local cache: a cached
        # dataset loads, anything else fails at once and is caught below.
    elif not hub_reachable():
        raise _unavailable(spec, "the hub cannot be reached (no internet connection?)")

    import datasets

    datasets.disable_progress_bars()
    try:
        rows = datasets.load_dataset(dataset, config or None, split="train")
    except OSError as err:  # ConnectionError, offline mode, not found: all OSErrors
        raise _unavailable(spec, f"{type(err).__name__}: {err}") from None
    if "text" not in rows.column_names:
        raise ValueError(
            f"dataset {dataset!r} has no 'text' column (its columns are {rows.column_names}); "
            "choose a dataset of plain text, or load it yourself and pass the text on"
        )
    pieces, total = [], 0
    for text in rows["text"]:
        text = text or ""  # some datasets have empty (None) rows
        pieces.append(text)
        total += len(text) + 1
        if n_chars and total >= n_chars:
            break
    text = "\n".join(pieces)
    return text[:n_chars] if n_chars else text


def hub_offline() -> bool:
    """True if the user asked the HF libraries to stay offline."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        from huggingface_hub import constants
    except ImportError:
        return flag
    return flag or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub? Answers in at most ``timeout`` s.

    Without this check, ``load_dataset`` retries a dead connection for about
    half a minute before giving up. Behind a proxy we cannot tell, so we say
    yes and let the libraries try.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(spec: str, reason: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"cannot load {spec!r} from the Hugging Face hub: {reason}. Offline, use one of the "
        f"built-in sources {OFFLINE_ALTERNATIVES} instead. If you are online, unset "
        "HF_HUB_OFFLINE (and check the dataset name at https://huggingface.co/datasets); "
        "a dataset already in your local HF cache also loads with HF_HUB_OFFLINE=1."
    )
