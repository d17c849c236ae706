"""Help → About: versions of the libraries the app runs on, and the device."""

from __future__ import annotations

import platform
import sys

from workbench import APP_NAME, __version__
from workbench.core.common.environment import library_versions


def device_summary() -> str:
    torch = sys.modules.get("torch")  # imported by the worker once a model loads
    if torch is None:
        return "not checked yet (torch loads with the first model)"
    parts = ["CPU"]
    if torch.cuda.is_available():
        parts.append(f"CUDA: {torch.cuda.get_device_name(0)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        parts.append("Apple MPS")
    return ", ".join(parts)


def about_html(loaded_device: str | None = None) -> str:
    rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in library_versions().items())
    device = device_summary() + (f"; model on {loaded_device}" if loaded_device else "")
    return (f"<h3>{APP_NAME} {__version__}</h3>"
            "<p>Experiment with language models on your own machine: generate, inspect "
            "attention, fine-tune and evaluate, offline.</p>"
            f"<p>Python {platform.python_version()} on {platform.system()} "
            f"{platform.machine()}<br>Devices: {device}</p>"
            f"<table cellspacing='6'>{rows}</table>")
