"""Where the app keeps its caches and data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user cache folder (``LMWB_CACHE_DIR`` overrides it, e.g. in tests)."""
    override = os.environ.get("LMWB_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("lm-workbench", appauthor=False))


def data_dir() -> Path:
    """The user data folder (``LMWB_DATA_DIR`` overrides it): results history, runs."""
    override = os.environ.get("LMWB_DATA_DIR")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("lm-workbench", appauthor=False))


def models_dir() -> Path:
    """Folder of local copies of the built-in models (``LMWB_MODELS_DIR`` overrides it).

    A folder ``<models_dir>/<model name>`` holding a transformers model is the first
    source tried for a built-in model.
    """
    override = os.environ.get("LMWB_MODELS_DIR")
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir("lm-workbench", appauthor=False)) / "models"


def sample_data(name: str = "") -> Path:
    """A sample file shipped in the package (``workbench/data``: the sentiment set, the
    corpus, the questions), or the folder itself; read through ``importlib.resources``, so
    that it is found the same way in a checkout, an editable install and a wheel."""
    from importlib.resources import files

    folder = files("workbench") / "data"
    # A package on the file system (this app is never imported from a zip file): its
    # resources are files with paths, which file dialogs and other processes can be given.
    if not isinstance(folder, Path):
        raise RuntimeError(f"the package's sample data is not on the file system: {folder}")
    return folder / name if name else folder
