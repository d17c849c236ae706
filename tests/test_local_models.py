"""Models already on the machine: fake folders in the layouts of LM Studio, Ollama, GPT4All
and llama.cpp's cache; the memory estimate and the refusal of a model that will not fit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType
from gguf.quants import quantize

from workbench.core.common import memory as common_memory
from workbench.core.common.errors import WorkbenchError
from workbench.core.models import catalog, local_models, model_headers
from workbench.core.models import memory as model_memory
from workbench.core.models.local_models import discover
from workbench.core.models.memory import MemoryEstimate, refusal
from workbench.core.models.model_headers import UnreadableModel, read_gguf_header

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("LMSTUDIO", "OLLAMA", "GPT4ALL", "LLAMACPP")
# (name, shape, type): 8*64 + 64 + 4*64 = 832 parameters
TENSORS = [("token_embd.weight", (8, 64), None), ("output_norm.weight", (64,), None),
           ("blk.0.attn_q.weight", (4, 64), GGMLQuantizationType.Q8_0)]
PARAMETERS = 8 * 64 + 64 + 4 * 64


def write_gguf(path: Path, name: str = "Tiny", arch: str = "llama",
               tensors=TENSORS) -> Path:
    """A small but well-formed GGUF file: F32 tensors and one Q8_0 tensor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), arch=arch)
    writer.add_name(name)
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0)
    writer.add_token_list(["<s>", "</s>", "a", "b"])
    for tensor_name, shape, kind in tensors:
        data = np.full(shape, 0.5, np.float32)
        if kind is None:
            writer.add_tensor(tensor_name, data)
        else:
            writer.add_tensor(tensor_name, quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def ollama_model(root: Path, host: str, namespace: str, model: str, tag: str,
                 blob_source: Path | None = None, manifest: object = None) -> Path:
    """An Ollama store entry: the manifest at manifests/<host>/<ns>/<model>/<tag> and the
    model blob it names (blobs/sha256-<hex>). Returns the blob's path."""
    blob_source = blob_source or write_gguf(root.parent / f"{model}-{tag}.gguf", name=model)
    data = blob_source.read_bytes()
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    blob = root / "blobs" / f"sha256-{digest}"
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    path = root / "manifests" / host / namespace / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = {"schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                               "digest": "sha256:" + "0" * 64, "size": 10},
                    "layers": [{"mediaType": "application/vnd.ollama.image.template",
                                "digest": "sha256:" + "1" * 64, "size": 5},
                               {"mediaType": "application/vnd.ollama.image.model",
                                "digest": f"sha256:{digest}", "size": len(data)}]}
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return blob


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """Each tool's folder, empty, set by its LMWB_*_DIR variable."""
    folders = {}
    for tool in TOOLS:
        folders[tool.lower()] = tmp_path / "tools" / tool.lower()
        monkeypatch.setenv(f"LMWB_{tool}_DIR", str(folders[tool.lower()]))
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    monkeypatch.delenv("LLAMA_CACHE", raising=False)
    return folders


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache of this test's own (the session's is shared)."""
    import huggingface_hub.constants
    import huggingface_hub.utils._cache_manager as cache_manager

    root = tmp_path / "hf-hub"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(cache_manager, "HF_HUB_CACHE", str(root))
    return root


def hf_repo(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Lay out ``files`` (name in the repo -> file) as the Hugging Face cache does: blobs,
    and a snapshot of symbolic links to them. Returns the snapshot folder."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for index, (name, source) in enumerate(files.items()):
        blob = repo / "blobs" / f"{index:064x}"
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(source.read_bytes())
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    return snapshot


def scan(source: str) -> local_models.LocationScan:
    (found,) = discover((source,))
    return found


# --- GGUF headers ----------------------------------------------------------------------------
def test_the_header_gives_what_gguf_reader_gives(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    header = read_gguf_header(path)
    reader = GGUFReader(path)
    assert header.parameters == PARAMETERS == sum(
        math.prod(int(d) for d in t.shape) for t in reader.tensors)
    assert header.tensors == len(reader.tensors) == 3
    assert (header.architecture, header.name, header.quantization) == ("llama", "Tiny", "Q8_0")
    assert header.data_bytes <= path.stat().st_size


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[: len(data) - 100], "it is truncated"),  # a download cut short
    (lambda data: data[:40], "it is truncated or damaged (its header counts more entries"),
    (lambda data: data[:200], "it is truncated"),
    (lambda data: data[:10], "it is truncated (10 bytes"),
    (lambda data: b"", "it is empty"),
    (lambda data: b"not a model at all\n" * 4, "it is not a GGUF file"),
    (lambda data: data[:4] + (1).to_bytes(4, "little") + data[8:], "GGUF version 1"),
    (lambda data: data[:8] + (10**15).to_bytes(8, "little") + data[16:], "damaged"),
])
def test_a_damaged_gguf_says_why(tmp_path, damage, reason):
    path = write_gguf(tmp_path / "m.gguf")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UnreadableModel, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_gguf_header(path)


# --- each layout ----------------------------------------------------------------------------
def test_lm_studio_publisher_model_file(tools):
    root = tools["lmstudio"]
    model = write_gguf(root / "lmstudio-community" / "Tiny-GGUF" / "Tiny-Q8_0.gguf")
    write_gguf(root / "lmstudio-community" / "Tiny-GGUF" / "mmproj-Tiny-F16.gguf")  # vision
    write_gguf(root / ".hidden" / "x" / "y.gguf")
    write_gguf(root / "a" / "b" / "c" / "too-deep.gguf")  # deeper than LM Studio looks
    (root / "a" / "b" / "notes.txt").write_text("not a model")
    found = scan("lmstudio")
    assert found.found and found.notes == []
    assert [m.name for m in found.models] == ["lmstudio-community/Tiny-GGUF/Tiny-Q8_0.gguf"]
    (m,) = found.models
    assert (m.reference, m.path, m.source) == (str(model), model, "lmstudio")
    assert (m.parameters, m.architecture, m.quantization) == (PARAMETERS, "llama", "Q8_0")
    assert m.size_bytes == model.stat().st_size and m.available


def test_ollama_manifests_name_the_gguf_blob(tools):
    root = tools["ollama"]
    blob = ollama_model(root, "registry.ollama.ai", "library", "tiny", "latest")
    ollama_model(root, "registry.ollama.ai", "someone", "other", "q8")
    ollama_model(root, "hf.co", "bob", "Tiny-GGUF", "Q8_0")
    found = scan("ollama")
    assert found.notes == []
    assert [m.name for m in found.models] == ["hf.co/bob/Tiny-GGUF:Q8_0", "someone/other:q8",
                                              "tiny:latest"]
    tiny = found.models[-1]
    assert (tiny.reference, tiny.path, tiny.parameters) == ("ollama:tiny:latest", blob,
                                                           PARAMETERS)
    # the reference loads through the catalog as that GGUF blob; "latest" is implied
    for ref in ("ollama:tiny:latest", "ollama:tiny", "OLLAMA:tiny"):
        source = catalog.resolve(ref)
        assert (source.kind, source.path, source.is_gguf) == ("gguf", blob, True)
    assert catalog.resolve("ollama:someone/other:q8").path.parent == root / "blobs"
    with pytest.raises(WorkbenchError, match="No Ollama model nothing:latest in"):
        catalog.resolve("ollama:nothing")
    with pytest.raises(WorkbenchError, match="is not an Ollama model name"):
        catalog.resolve("ollama:../../etc/passwd")


@pytest.mark.parametrize("breakage, note", [
    ("{not json", "its manifest is broken (it is not JSON)"),
    ({"layers": "none"}, "its manifest is broken (it has no list of layers)"),
    ({"layers": [{"mediaType": "application/vnd.ollama.image.license"}]},
     "no layer is a model"),
    ({"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "md5:00"}]},
     "has no sha256 digest"),
    ({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                  "digest": "sha256:" + "f" * 64}]}, "its model blob sha256-fff"),
])
def test_a_broken_ollama_manifest_is_a_note(tools, breakage, note):
    root = tools["ollama"]
    ollama_model(root, "registry.ollama.ai", "library", "good", "latest")
    ollama_model(root, "registry.ollama.ai", "library", "bad", "latest", manifest=breakage)
    found = scan("ollama")
    assert [m.name for m in found.models] == ["good:latest"]
    assert len(found.notes) == 1 and found.notes[0].startswith("skipped bad:latest: ")
    assert note in found.notes[0]
    with pytest.raises(WorkbenchError, match="The Ollama model bad:latest: "):
        catalog.resolve("ollama:bad")


def test_an_unfinished_ollama_blob_is_a_note(tools, tmp_path):
    root = tools["ollama"]
    blob = ollama_model(root, "registry.ollama.ai", "library", "cut", "latest")
    blob.write_bytes(blob.read_bytes()[:100])
    (found,) = discover(("ollama",))
    assert found.models == [] and "an unfinished pull" in found.notes[0]


def test_gpt4all_folder(tools):
    root = tools["gpt4all"]
    write_gguf(root / "Tiny.Q8_0.gguf")
    write_gguf(root / "incomplete-Other.Q4_0.gguf")  # a download in progress
    write_gguf(root / "sub" / "not-looked-at.gguf")  # GPT4All keeps its models flat
    (root / "localdocs_v2.db").write_bytes(b"SQLite format 3\0")
    found = scan("gpt4all")
    assert [m.name for m in found.models] == ["Tiny.Q8_0.gguf"]
    assert found.notes == ["skipped incomplete-Other.Q4_0.gguf: an unfinished download"]


def test_llama_cpp_cache(tools):
    root = tools["llamacpp"]
    write_gguf(root / "bob_Tiny-GGUF_tiny-q8_0.gguf")
    (root / "bob_Tiny-GGUF_tiny-q8_0.gguf.json").write_text('{"etag": "x"}')
    write_gguf(root / "bob_Big-GGUF_big-00001-of-00002.gguf")
    write_gguf(root / "bob_Big-GGUF_big-00002-of-00002.gguf")
    found = scan("llamacpp")
    assert [m.name for m in found.models] == ["bob_Big-GGUF_big-00001-of-00002.gguf",
                                              "bob_Tiny-GGUF_tiny-q8_0.gguf"]
    split, single = found.models
    assert single.available and not split.available
    assert "split into 2 files" in split.note


def test_truncated_and_foreign_files_are_skipped_with_a_note(tools):
    root = tools["gpt4all"]
    good = write_gguf(root / "good.gguf")
    (root / "cut.gguf").write_bytes(good.read_bytes()[:-200])
    (root / "text.gguf").write_text("hello")
    (root / "empty.gguf").write_bytes(b"")
    found = scan("gpt4all")
    assert [m.name for m in found.models] == ["good.gguf"]
    notes = sorted(found.notes)
    assert notes[0].startswith("skipped cut.gguf: it is truncated (")
    assert notes[1] == "skipped empty.gguf: it is empty"
    assert notes[2] == "skipped text.gguf: it is not a GGUF file (no GGUF magic bytes)"


def test_missing_and_unreadable_locations(tools, monkeypatch):
    found = discover()
    assert [s.location.source for s in found] == ["lmstudio", "ollama", "gpt4all", "llamacpp"]
    assert all(not s.found and s.models == [] and s.notes == [] for s in found)
    # a folder the scan may not enter: a note, and the rest is still scanned
    root = tools["lmstudio"]
    write_gguf(root / "pub" / "ok" / "ok.gguf")
    locked = root / "pub" / "locked"
    locked.mkdir(parents=True)
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(local_models.os, "scandir", scandir)
    found = scan("lmstudio")
    assert [m.name for m in found.models] == ["pub/ok/ok.gguf"]
    assert found.notes == [f"cannot read {locked}: Permission denied"]
    # a location that is a file, not a folder: not found, no error
    monkeypatch.setenv("LMWB_GPT4ALL_DIR", str(root / "pub" / "ok" / "ok.gguf"))
    assert not scan("gpt4all").found


def test_hugging_face_cache_repos_of_gguf_files(hf_cache, tiny, tmp_path):
    gguf = write_gguf(tmp_path / "tiny.Q8_0.gguf")
    snapshot = hf_repo(hf_cache, "bob/Tiny-GGUF", {"tiny.Q8_0.gguf": gguf,
                                                   "mmproj-tiny-f16.gguf": gguf})
    folder = tiny("llama")
    hf_repo(hf_cache, "bob/tiny-llama", {f.name: f for f in folder.iterdir()})
    rows = {r.name: r for r in catalog.hf_cache_models()}
    assert sorted(rows) == ["bob/Tiny-GGUF/tiny.Q8_0.gguf", "bob/tiny-llama"]
    file_row = rows["bob/Tiny-GGUF/tiny.Q8_0.gguf"]
    assert file_row.available and file_row.reference == str(snapshot / "tiny.Q8_0.gguf")
    assert (file_row.parameters, file_row.quantization) == (PARAMETERS, "Q8_0")
    assert catalog.resolve(file_row.reference).is_gguf
    folder_row = rows["bob/tiny-llama"]
    assert folder_row.reference == "bob/tiny-llama" and folder_row.parameters > 0


# --- where the folders are ---------------------------------------------------------------------
def test_overrides_and_the_tools_own_variables(tools, tmp_path, monkeypatch):
    by_source = {loc.source: loc for loc in local_models.locations()}
    assert by_source["ollama"].folders == (tools["ollama"],)
    assert by_source["ollama"].origin == "LMWB_OLLAMA_DIR"
    # without LMWB_*, each tool's own variable counts
    monkeypatch.delenv("LMWB_OLLAMA_DIR")
    monkeypatch.delenv("LMWB_LLAMACPP_DIR")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-models"))
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))
    by_source = {loc.source: loc for loc in local_models.locations()}
    assert by_source["ollama"].folders == (tmp_path / "ollama-models",)
    assert by_source["ollama"].origin == "OLLAMA_MODELS"
    assert by_source["llamacpp"].folders == (tmp_path / "llama-cache",)
    # several folders, separated as in PATH
    monkeypatch.setenv("LMWB_GPT4ALL_DIR", os.pathsep.join([str(tmp_path / "a"),
                                                            str(tmp_path / "b")]))
    write_gguf(tmp_path / "a" / "one.gguf")
    write_gguf(tmp_path / "b" / "two.gguf")
    assert [m.name for m in scan("gpt4all").models] == ["one.gguf", "two.gguf"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux defaults")
def test_default_folders_on_linux(tmp_path, monkeypatch):
    for tool in TOOLS:
        monkeypatch.delenv(f"LMWB_{tool}_DIR", raising=False)
    for name in ("OLLAMA_MODELS", "LLAMA_CACHE", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    by_source = {loc.source: loc for loc in local_models.locations()}
    assert by_source["lmstudio"].folders == (tmp_path / ".lmstudio/models",
                                             tmp_path / ".cache/lm-studio/models")
    assert by_source["ollama"].folders == (tmp_path / ".ollama/models",
                                           Path("/usr/share/ollama/.ollama/models"))
    assert by_source["gpt4all"].folders == (tmp_path / ".local/share/nomic.ai/GPT4All",)
    assert by_source["llamacpp"].folders == (tmp_path / ".cache/llama.cpp",)
    assert all(loc.origin == "default" for loc in by_source.values())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    llamacpp = next(loc for loc in local_models.locations() if loc.source == "llamacpp")
    assert llamacpp.folders == (tmp_path / "xdg-cache" / "llama.cpp",)
    # the older LM Studio folder is looked in too
    write_gguf(tmp_path / ".cache/lm-studio/models/pub/old/old.gguf")
    assert [m.name for m in scan("lmstudio").models] == ["pub/old/old.gguf"]


def test_two_hundred_models_are_found_in_well_under_a_second(tools):
    template = write_gguf(tools["gpt4all"].parent / "template.gguf").read_bytes()
    for i in range(50):
        for path in (tools["lmstudio"] / f"pub{i % 5}" / f"model{i}" / f"m{i}.gguf",
                     tools["gpt4all"] / f"m{i}.gguf", tools["llamacpp"] / f"m{i}.gguf"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(template)
    blob_source = tools["gpt4all"].parent / "template.gguf"
    for i in range(50):
        ollama_model(tools["ollama"], "registry.ollama.ai", "library", f"m{i}", "latest",
                     blob_source=blob_source)
    model_headers._HEADER_CACHE.clear()
    start = time.perf_counter()
    found = discover()
    first = time.perf_counter() - start
    start = time.perf_counter()
    discover()
    again = time.perf_counter() - start
    assert sum(len(s.models) for s in found) == 200
    assert all(s.notes == [] for s in found)
    print(f"200 models: first discovery {first * 1000:.0f} ms, again {again * 1000:.0f} ms")
    assert first < 1.0 and again < 1.0


# --- memory -------------------------------------------------------------------------------------
def test_the_estimate_by_hand():
    seven_b = MemoryEstimate(7_000_000_000)
    assert seven_b.weights_bytes("float32") == 28_000_000_000  # 7e9 × 4 bytes
    assert seven_b.weights_bytes("bfloat16") == seven_b.weights_bytes("float16") == 14 * 10**9
    # the overhead: 10% of the weights and 0.5 GB
    assert seven_b.load_bytes("float32") == 28_000_000_000 + 2_800_000_000 + 500_000_000
    assert seven_b.load_bytes("bfloat16") == 14_000_000_000 + 1_400_000_000 + 500_000_000
    assert seven_b.describe(9_100_000_000) == (
        "needs about 28 GB in float32 · 14 GB in bfloat16; 9.1 GB free")
    # a GGUF that is not converted yet holds its float32 weights twice at the conversion
    gguf = MemoryEstimate(7_000_000_000, "GGUF Q4_K_M", converts_first=True)
    assert gguf.needed_bytes("bfloat16") == gguf.conversion_bytes() == 2 * 28 * 10**9 + 500_000_000


def test_the_estimate_of_files_and_folders(tmp_path, tiny):
    path = write_gguf(tmp_path / "m.gguf")
    estimate = model_memory.estimate_path(path)
    # kept quantized: the matrices as int8 rows (1 byte a value), the vector in float32
    quantized = 8 * 64 * 1 + 64 * 4 + 4 * 64 * 1
    assert estimate == MemoryEstimate(PARAMETERS, "GGUF Q8_0", converts_first=True,
                                      quantized_bytes=quantized)
    folder = tiny("llama")
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", "np") as f:
        by_hand = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    estimate = model_memory.estimate_reference(str(folder))
    assert estimate.parameters == by_hand and estimate.stored_as == "safetensors float32"
    assert model_memory.estimate_reference("no/such-model") is None
    assert model_memory.estimate_path(tmp_path / "missing.gguf") is None


def test_the_refusal_suggests_bfloat16_when_it_fits():
    seven_b = MemoryEstimate(7_000_000_000)
    assert refusal(seven_b, "float32", 40 * 10**9) is None
    message = refusal(seven_b, "float32", 20 * 10**9, "Tiny-7B")
    assert message == (
        "Tiny-7B does not fit in memory: in float32 it needs about 31 GB (28 GB of weights "
        "and the runtime), and 20 GB is free. Choose bfloat16 in Dtype (--dtype bfloat16): "
        "about 16 GB, which fits.")
    message = refusal(seven_b, "float32", 9_100_000_000, "Tiny-7B")
    assert message.endswith("and 9.1 GB is free. Even bfloat16 needs about 16 GB: choose "
                            "a smaller model, or close programs that hold memory.")
    message = refusal(seven_b, "bfloat16", 9_100_000_000, "Tiny-7B")
    assert "in bfloat16 it needs about 16 GB" in message
    assert message.endswith("Choose a smaller model, or close programs that hold memory.")
    first_load = MemoryEstimate(7_000_000_000, "GGUF", converts_first=True)
    message = refusal(first_load, "bfloat16", 20 * 10**9, "tiny.gguf")
    assert "its first load converts the GGUF file to float32 once" in message
    assert "about 56 GB" in message


def test_the_load_refuses_a_model_that_does_not_fit(tiny, monkeypatch):
    from workbench.core.models.loader import LoadOptions, load_model

    folder = tiny("llama")
    estimate = model_memory.estimate_path(folder)
    # free memory between what bfloat16 and float32 need
    monkeypatch.setattr(common_memory, "available_memory",
                        lambda: estimate.load_bytes("bfloat16") + 1)
    with pytest.raises(WorkbenchError, match="does not fit in memory: in float32 .* Choose "
                                             "bfloat16 in Dtype"):
        load_model(str(folder), LoadOptions(device="cpu", dtype="float32"))
    loaded = load_model(str(folder), LoadOptions(device="cpu", dtype="bfloat16"))
    assert loaded.dtype == "bfloat16"
    monkeypatch.setenv("LMWB_SKIP_MEMORY_CHECK", "1")
    assert load_model(str(folder), LoadOptions(device="cpu", dtype="float32")).dtype == "float32"


# --- the command line -----------------------------------------------------------------------------
def test_models_list_groups_the_local_models(tools):
    write_gguf(tools["lmstudio"] / "pub" / "tiny" / "tiny.gguf")
    ollama_model(tools["ollama"], "registry.ollama.ai", "library", "tiny", "latest")
    (tools["gpt4all"]).mkdir(parents=True)
    (tools["gpt4all"] / "cut.gguf").write_bytes(b"GGUF")
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "main.py", "models", "list", "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    rows = {m["name"]: m for m in data["models"]}
    assert rows["SmolLM2-135M-Instruct"]["default"] is True  # the built-ins stay first
    assert list(rows)[:2] == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
    tiny = rows["tiny:latest"]
    assert (tiny["group"], tiny["reference"], tiny["available"], tiny["parameters"]) == (
        "ollama", "ollama:tiny:latest", True, PARAMETERS)
    assert tiny["weights_bytes"] == {"float32": 4 * PARAMETERS, "bfloat16": 2 * PARAMETERS,
                                     "float16": 2 * PARAMETERS}
    assert {"name", "default", "task", "available"} <= set(tiny)
    assert rows["pub/tiny/tiny.gguf"]["group"] == "lmstudio"
    locations = {loc["source"]: loc for loc in data["locations"]}
    assert locations["gpt4all"]["notes"] == [
        "skipped cut.gguf: it is truncated (4 bytes, shorter than a header)"]
    assert locations["llamacpp"]["found"] is False
    text = subprocess.run([sys.executable, "main.py", "models", "list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env).stdout
    assert "SmolLM2-135M-Instruct (default)" in text
    assert f"Ollama: 1 model(s) in {tools['ollama']} (set by LMWB_OLLAMA_DIR)" in text
    assert "load with --model ollama:tiny:latest" in text
    assert "llama.cpp cache: not found" in text


# --- the window -----------------------------------------------------------------------------------
def test_the_picker_lists_the_groups_and_refuses_what_does_not_fit(qtbot, tools, hf_cache,
                                                                   tiny, monkeypatch):
    from workbench.ui.shell.model_picker import GROUP_ROLE, ModelPicker

    hf_repo(hf_cache, "bob/tiny-llama", {f.name: f for f in tiny("llama").iterdir()})
    lm = write_gguf(tools["lmstudio"] / "pub" / "tiny" / "tiny.gguf")
    ollama_model(tools["ollama"], "registry.ollama.ai", "library", "tiny", "latest")
    write_gguf(tools["gpt4all"] / "tiny.gguf")
    picker = ModelPicker()
    qtbot.addWidget(picker)
    picker.show()
    with qtbot.waitSignal(picker.discovery_finished, timeout=10000) as found:
        picker.start_discovery()
    assert found.args[0][0].startswith("Models already on this machine: 1 in the Hugging Face "
                                       "cache, 1 in LM Studio, 1 in Ollama, 1 in GPT4All (")
    combo = picker.combo
    items = [combo.itemText(i) for i in range(combo.count())]
    assert items[:2] == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
    assert items[2:] == ["— Hugging Face cache —", "bob/tiny-llama",
                         f"— LM Studio ({tools['lmstudio']}) —", "pub/tiny/tiny.gguf",
                         f"— Ollama ({tools['ollama']}) —", "tiny:latest",
                         f"— GPT4All ({tools['gpt4all']}) —", "tiny.gguf"]
    header = combo.model().item(4)
    assert not header.isEnabled() and combo.itemData(4, GROUP_ROLE) == "header"
    combo.setCurrentIndex(items.index("bob/tiny-llama"))
    assert picker.reference() == "bob/tiny-llama"
    # a listed model loads by its reference; its memory shows once estimated
    combo.setCurrentIndex(items.index("tiny:latest"))
    assert picker.reference() == "ollama:tiny:latest"
    picker.dtype.setCurrentText("float32")
    qtbot.waitUntil(lambda: "fp32" in picker.memory.text(), timeout=10000)
    assert "<b>" in picker.memory.text() and "free" in picker.memory.text()
    combo.setCurrentIndex(items.index("pub/tiny/tiny.gguf"))
    assert picker.reference() == str(lm)
    qtbot.waitUntil(lambda: picker.estimate() is not None, timeout=10000)
    # too little memory for float32, enough for bfloat16: refused, with the suggestion
    assert picker.estimate().parameters == PARAMETERS
    # as if converted already, so that the load, not the conversion, is what counts
    estimate = MemoryEstimate(PARAMETERS, "GGUF Q8_0")
    picker._estimates[str(lm)] = estimate
    monkeypatch.setattr(common_memory, "available_memory",
                        lambda: estimate.load_bytes("bfloat16") + 1)
    requested = []
    picker.load_requested.connect(lambda *args: requested.append(args))
    picker.request_load()
    assert requested == []
    dialog = picker.last_dialog
    assert dialog is not None and dialog.isVisible() and dialog.objectName() == "memory-dialog"
    assert "does not fit in memory" in dialog.text() and "Choose bfloat16" in dialog.text()
    dialog.close()
    picker.update_memory_label()
    assert "#b00020" in picker.memory.text()  # shown in red before one even asks
    picker.dtype.setCurrentText("bfloat16")
    picker.request_load()
    assert requested == [(str(lm), "auto", "bfloat16")]
    # restored from the settings as a path: shown under its name once listed
    picker.set_reference("ollama:tiny:latest")
    assert combo.currentText() == "tiny:latest"


def test_the_window_lists_local_models_and_refuses_what_does_not_fit(qtbot, tools, tiny,
                                                                    monkeypatch):
    from workbench.ui.shell.main_window import MainWindow

    ollama_model(tools["ollama"], "registry.ollama.ai", "library", "tiny", "latest")
    tools["gpt4all"].mkdir(parents=True)
    (tools["gpt4all"] / "cut.gguf").write_bytes(b"GGUF")
    window = MainWindow(autoload=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: "Models already on this machine" in window.log.text(),
                    timeout=10000)
    assert "1 in Ollama" in window.log.text()
    assert "NOTE: GPT4All: skipped cut.gguf: it is truncated" in window.log.text()
    assert window.picker.combo.findText("tiny:latest") > 0
    # a load the model bar could not judge (auto dtype) is refused by the load itself
    monkeypatch.setattr(common_memory, "available_memory", lambda: 1000)
    window.load_model(str(tiny("llama")))
    qtbot.waitUntil(lambda: not window.loading, timeout=60000)
    dialog = window.last_dialog
    assert dialog is not None and dialog.windowTitle() == f"Load {tiny('llama')} failed"
    assert dialog.text().startswith("llama does not fit in memory: in float32 it needs about")
    assert window.loaded is None
