"""Fast detection of whether the Hugging Face Hub can be reached.

``hf_hub_download`` spends about 20 s on retries before it gives up offline, so the
app asks once, with a short deadline, and then passes ``local_files_only`` itself.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

_TRUTHY = {"1", "true", "yes", "on"}
_cached: bool | None = None


def hub_endpoint() -> tuple[str, int]:
    """Host and port of the Hub endpoint that huggingface_hub is configured for."""
    from huggingface_hub import constants

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def offline_forced() -> bool:
    return any(os.environ.get(name, "").lower() in _TRUTHY
               for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LMWB_OFFLINE"))


def hub_reachable(timeout: float = 1.5, refresh: bool = False) -> bool:
    """True if a TCP connection to the Hub succeeds within ``timeout`` seconds.

    Name resolution has no timeout of its own, so the check runs in a daemon thread
    and the answer is "offline" when the deadline passes. The result is cached for the
    life of the process unless ``refresh`` is set.
    """
    global _cached
    if offline_forced():
        return False
    if _cached is not None and not refresh:
        return _cached
    host, port = hub_endpoint()
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except Exception:  # any failure to connect means "not reachable"
            result.append(False)

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.2)
    _cached = bool(result and result[0])
    return _cached
