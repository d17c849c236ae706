"""Versions of the libraries the app runs on (read from package metadata, no imports)."""

from __future__ import annotations

from importlib import metadata

from workbench import __version__

LIBRARIES = ("PySide6", "torch", "transformers", "tokenizers", "accelerate", "safetensors",
             "gguf", "huggingface_hub", "pyqtgraph", "bertviz", "sacrebleu", "peft")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    versions = {"lm-workbench": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
