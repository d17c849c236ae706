"""Decoding paths: the int8 and bfloat16 copies generation runs on, how auto chooses, and the
fallbacks when a path cannot run (forced off here, whatever this machine has)."""

import math

import pytest
import torch

from tests.cli_runner import run_in_process
from workbench.core.generation.explore import next_token_logits
from workbench.core.generation.generate import generate
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models import compiling, decoding
from workbench.core.models.loader import load_model


@pytest.fixture()
def llama(tiny):
    return load_model(str(tiny("llama")))


@pytest.fixture()
def native_bf16(monkeypatch):
    """The int8 path allowed whatever this CPU is (ATen's kernel runs everywhere; the
    check only keeps auto off CPUs where it is slow)."""
    monkeypatch.setattr(decoding, "cpu_has_native_bf16", lambda: True)


def reference_int8(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row int8 of the float32 weight, round to nearest, in float64."""
    w = linear.weight.detach().double()
    scale = w.abs().amax(dim=1) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127)
    out = x.double() @ (q * scale[:, None]).T
    return out if linear.bias is None else out + linear.bias.detach().double()


@pytest.mark.parametrize("rows", [1, 3, 48, 49, 70])  # packed kernel up to 48 rows, then not
def test_int8_layers_compute_the_quantised_product(rows):
    torch.manual_seed(rows)
    model = torch.nn.Sequential(torch.nn.Linear(48, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 32, bias=False))
    decoder = decoding.build("int8", model)
    for original, copy in ((model[0], decoder[0]), (model[2], decoder[2])):
        assert copy.qweight.dtype == torch.int8 and copy.qweight.shape == original.weight.shape
        x = torch.randn(rows, original.in_features)
        with torch.inference_mode():
            got = copy(x).double()
        expected = reference_int8(original, x.bfloat16().double())
        # bfloat16 activations and output: 8 bits of mantissa
        assert torch.allclose(got, expected, rtol=2e-2, atol=2e-2 * expected.abs().max().item())
    assert model[0].weight.dtype == torch.float32  # the original is left as it was


def test_auto_is_exact_for_a_model_the_caches_hold(llama, native_bf16):
    name, note = decoding.choose("auto", llama.model)
    assert name == "exact" and "small enough" in note
    assert llama.decoding().model is llama.model


def test_auto_takes_int8_where_it_pays(llama, native_bf16, monkeypatch):
    monkeypatch.setattr(decoding, "AUTO_MIN_BYTES", 0)
    assert decoding.choose("auto", llama.model) == ("int8", "")


@pytest.mark.parametrize("missing, words", [
    ("cpu_has_native_bf16", "no native bfloat16"),
    ("int8_kernel_available", "no int8 weight kernel"),
])
def test_paths_fall_back_to_exact_when_forced_off(llama, monkeypatch, missing, words):
    monkeypatch.setattr(decoding, "AUTO_MIN_BYTES", 0)
    monkeypatch.setattr(decoding, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(decoding, missing, lambda: False)
    for requested in ("auto", "int8"):
        name, note = decoding.choose(requested, llama.model)
        assert name == "exact" and words in note, (requested, note)
    llama.decode = "int8"
    result = generate(llama, "the cat sat on", SamplingSettings(max_new_tokens=3, do_sample=False,
                                                                chat=False))
    assert result.decoding == "exact" and any(words in n for n in result.notices)
    if missing == "cpu_has_native_bf16":  # and bfloat16 needs the same instructions
        assert decoding.choose("bf16", llama.model)[0] == "exact"


def test_a_model_loaded_in_reduced_precision_decodes_as_loaded(tiny, native_bf16):
    from workbench.core.models.loader import LoadOptions

    loaded = load_model(str(tiny("llama")), LoadOptions(dtype="bfloat16"))
    name, note = decoding.choose("bf16", loaded.model)
    assert name == "exact" and "bfloat16 already" in note
    # int8 still reads half the bytes of bfloat16: its copy is built from those weights
    assert decoding.choose("int8", loaded.model) == ("int8", "")


def test_an_unknown_path_is_one_message():
    with pytest.raises(decoding.WorkbenchError, match="Unknown decoding path 'fast'"):
        decoding.check_decode("fast")


@pytest.mark.parametrize("path", ["int8", "bf16"])
def test_generation_records_the_logits_of_its_path(llama, native_bf16, path):
    llama.decode = path
    settings = SamplingSettings(max_new_tokens=6, do_sample=False, chat=False)
    result = generate(llama, "the cat sat on", settings, top_n=5)
    assert result.decoding == path
    decoder = llama.decoding().model
    assert decoder is not llama.model
    assert next(llama.model.parameters()).dtype == torch.float32  # analysis stays exact
    ids = list(result.prompt_token_ids)
    for step in result.sequences[0].steps:
        with torch.inference_mode():
            logits = decoder(torch.tensor([ids])).logits[0, -1].float()
        probs = torch.softmax(logits, -1)
        assert step.token_id == int(probs.argmax())  # greedy on the path's own logits
        assert step.raw_probability == pytest.approx(float(probs.max()), rel=1e-3)
        assert [c.token_id for c in step.candidates] == probs.topk(5).indices.tolist()
        # the explorer's and inspector's replay of a step uses the same path
        replay = torch.softmax(next_token_logits(llama, ids), -1)
        assert float(replay[step.token_id]) == pytest.approx(float(probs.max()), rel=1e-3)
        ids.append(step.token_id)


def test_one_copy_is_kept_and_exact_builds_none(llama, native_bf16):
    llama.decode = "int8"
    first = llama.decoding().model
    assert llama.decoding().model is first  # built once
    llama.decode = "bf16"
    second = llama.decoding().model
    assert second is not first and next(second.parameters()).dtype == torch.bfloat16
    llama.decode = "exact"
    assert llama.decoding().model is llama.model
    assert llama._decoder is None  # the bfloat16 copy is dropped, not kept beside the model


def test_sampling_with_the_app_chain_on_the_int8_path(llama, native_bf16):
    """Processors and the sampler order run on the path's logits (cast to float32 by
    transformers): top-k 3 keeps the tokens at or above the third logit (reduced precision
    makes ties, which top-k keeps, as transformers' does)."""
    llama.decode = "int8"
    settings = SamplingSettings(max_new_tokens=5, do_sample=True, top_k=3, top_p=1.0,
                                temperature=0.8, seed=3, chat=False)
    result = generate(llama, "the dog", settings, top_n=80)
    decoder = llama.decoding().model
    ids = list(result.prompt_token_ids)
    for step in result.sequences[0].steps:
        with torch.inference_mode():
            logits = decoder(torch.tensor([ids])).logits[0, -1].float()
        kept = logits >= logits.topk(3).values[-1]
        assert step.kept_count == int(kept.sum()) >= 3
        assert {c.token_id for c in step.candidates if c.kept} == \
            set(kept.nonzero().flatten().tolist())
        assert math.isclose(sum(c.probability for c in step.candidates if c.kept), 1.0,
                            rel_tol=1e-4)
        ids.append(step.token_id)


def test_the_command_line_names_the_path(tiny, monkeypatch):
    bad = run_in_process("generate", "--model", str(tiny("llama")), "--prompt", "the cat",
                         "--decode", "fast")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: Unknown decoding path 'fast': use one of auto, exact, int8, bf16, compiled."]
    import json

    out = run_in_process("generate", "--model", str(tiny("llama")), "--prompt", "the cat",
                         "--max-new-tokens", "3", "--no-chat", "--decode", "exact", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["decoding"] == "exact"


def test_a_copy_that_would_not_fit_is_not_made(llama, native_bf16, monkeypatch):
    from workbench.core.common import memory

    monkeypatch.setattr(decoding, "AUTO_MIN_BYTES", 0)
    need = decoding.copy_bytes("int8", llama.model)
    monkeypatch.setattr(memory, "available_memory", lambda device: need)
    name, note = decoding.choose("auto", llama.model)
    assert name == "exact" and "needs" in note and "free" in note


def test_the_copy_keeps_tied_weights_tied_and_no_float32_weight(tiny, native_bf16):
    gpt2 = load_model(str(tiny("gpt2")))  # its output head is its token embedding
    model = gpt2.model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for name in ("int8", "bf16"):
        copy = decoding.build(name, model)
        assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight
        assert not any(p.dtype == torch.float32 for p in copy.parameters())
        assert torch.equal(copy.get_input_embeddings().weight,
                           model.get_input_embeddings().weight.bfloat16())
        held = sum(t.numel() * t.element_size() for t in
                   {id(t): t for t in [*copy.parameters(), *copy.buffers()]}.values())
        assert held <= decoding.copy_bytes(name, model) + sum(
            b.numel() * b.element_size() for b in model.buffers()) + \
            sum(m.out_features * 2 for m in copy.modules() if hasattr(m, "qweight"))


def test_a_copy_made_stays_in_use_when_memory_runs_low_later(llama, native_bf16, monkeypatch):
    from workbench.core.common import memory

    llama.decode = "int8"
    first = llama.decoding().model
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)
    assert llama.decoding().model is first  # not dropped for the memory it already holds
    llama.decode = "bf16"  # a new copy would not fit
    path = llama.decoding()
    assert path.name == "exact" and "needs" in path.note
    assert llama._decoder is None  # the int8 copy nobody asks for any more is freed


def test_the_compiled_path_compiles_once_a_shape_and_keeps_every_record(llama):
    """torch.compile with the static cache, in a thread as the worker runs it: the same
    greedy tokens and records as the eager path, the compile announced once per shape."""
    import threading

    from workbench.core.common.jobs import JobContext, Progress

    settings = SamplingSettings(max_new_tokens=6, do_sample=False, chat=False)
    eager = generate(llama, "the cat sat on", settings, top_n=5)
    llama.decode = "compiled"
    path = llama.decoding()
    assert (path.name, path.base, path.note) == ("compiled", "exact", "")
    assert path.model is llama.model and not path.reduced
    results, events, failures = [], [], []

    def run() -> None:
        try:
            for _ in range(2):
                results.append(generate(llama, "the cat sat on", settings,
                                        JobContext(emit=events.append), top_n=5))
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive() and not failures, failures
    compiling = [e for e in events if isinstance(e, Progress) and "Compiling" in e.message]
    assert len(compiling) == 1  # the second run of the same shape reuses the compiled code
    # the first run's time includes the compile, and says so
    assert ["include the compile" in " ".join(r.notices) for r in results] == [True, False]
    for result in results:
        assert result.decoding == "compiled"
        assert result.token_ids == eager.token_ids
        for got, want in zip(result.sequences[0].steps, eager.sequences[0].steps, strict=True):
            assert got.probability == pytest.approx(want.probability, abs=1e-5)
            assert [c.token_id for c in got.candidates] == [c.token_id for c in want.candidates]
    assert len(llama.compiled_shapes) == 1
    from workbench.core.common.paths import cache_dir

    assert (cache_dir() / "torch-compile").is_dir()  # compiled code kept for later sessions


@pytest.mark.parametrize("change, words", [
    ("compiler", "needs a C++ compiler"),
    ("model", "does not mark LlamaForCausalLM as compilable"),
    ("dynamo", "does not run with this Python"),
])
def test_the_compiled_path_falls_back_when_forced_off(llama, monkeypatch, change, words):
    import shutil

    if change == "compiler":
        monkeypatch.setattr(shutil, "which", lambda name: None)
    elif change == "model":
        monkeypatch.setattr(type(llama.model), "_can_compile_fullgraph", False)
    else:
        monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    llama.decode = "compiled"
    path = llama.decoding()
    assert path.name == "exact" and words in path.note, path.note
    result = generate(llama, "the cat", SamplingSettings(max_new_tokens=3, do_sample=False,
                                                         chat=False))
    assert result.decoding == "exact" and any(words in n for n in result.notices)
    assert not llama.compiled_shapes


@pytest.mark.parametrize("prompt, new, limit, expected", [
    (5, 8, None, 256), (200, 56, None, 256), (200, 57, None, 512), (5, 8, 128, 128),
    (100, 100, 150, 200)])
def test_the_static_cache_length_is_bucketed(prompt, new, limit, expected):
    assert compiling.static_cache_length(prompt, new, limit) == expected


def test_a_compiler_that_does_not_work_turns_the_path_off_with_its_reason(llama, monkeypatch):
    monkeypatch.setattr(compiling, "_compile_failures", {})
    monkeypatch.setattr(compiling, "_compile_probed", set())
    monkeypatch.setattr(compiling, "_probe_compile",
                        lambda device: "InvalidCxxCompiler: No working C++ compiler found")
    llama.decode = "compiled"
    path = llama.decoding()
    assert path.name == "exact" and "No working C++ compiler" in path.note
    result = generate(llama, "the cat", SamplingSettings(max_new_tokens=3, do_sample=False,
                                                         chat=False))
    assert result.decoding == "exact" and not llama.compiled_shapes


def test_a_compile_that_fails_during_generation_is_one_message_then_off(llama, monkeypatch):
    """A failure only the real compile meets (the probe passed): one clear error, and the
    next generation decodes on the base path, saying why."""
    monkeypatch.setattr(compiling, "_compile_failures", {})
    monkeypatch.setattr(compiling, "_compile_probed", set())
    monkeypatch.setattr(compiling, "_probe_compile", lambda device: "")

    def failing_generate(*args, **kwargs):
        raise torch._dynamo.exc.TorchDynamoException("backend failed")

    llama.model.generate = failing_generate  # this test's own model (a fixture per test)
    llama.decode = "compiled"
    settings = SamplingSettings(max_new_tokens=3, do_sample=False, chat=False)
    with pytest.raises(decoding.WorkbenchError, match="Compiling the model failed .*"
                       "TorchDynamoException: backend failed.* decode on exact, uncompiled"):
        generate(llama, "the cat", settings)
    del llama.model.generate  # the class's own again
    path = llama.decoding()
    assert path.name == "exact" and "backend failed" in path.note
    assert generate(llama, "the cat", settings).decoding == "exact"


def test_a_model_with_its_own_cache_is_not_compiled_and_still_batches(llama):
    """A generation config that names its cache: transformers refuses a cache handed to
    generate beside it, so neither the compiled path nor the shared prompt passes one."""
    from workbench.core.generation.compare import compare
    from workbench.core.generation.settings import parse_strategy

    llama.model.generation_config.cache_implementation = "static"
    llama.decode = "compiled"
    path = llama.decoding()
    assert path.name == "exact" and "chooses its own cache (static)" in path.note
    several = generate(llama, "the cat sat", SamplingSettings(
        max_new_tokens=4, chat=False, num_return_sequences=2, seed=1))
    assert len(several.sequences) == 2
    result = compare(llama, "the cat sat", [parse_strategy("top_k=5"), parse_strategy("greedy")],
                     max_new_tokens=4, chat=False)
    assert [len(s.sequences) for s in result.strategies] == [1, 1]


def test_the_compile_probe_runs_once_a_session(llama, monkeypatch):
    """Every generation asks for its path: the probe compile must not run each time."""
    calls = []
    monkeypatch.setattr(compiling, "_compile_failures", {})
    monkeypatch.setattr(compiling, "_compile_probed", set())
    monkeypatch.setattr(compiling, "_probe_compile", lambda device: calls.append(device) or "")
    llama.decode = "compiled"
    assert [llama.decoding().name for _ in range(3)] == ["compiled"] * 3
    assert calls == ["cpu"] and compiling.compile_probed("cpu")
