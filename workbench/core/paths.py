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
