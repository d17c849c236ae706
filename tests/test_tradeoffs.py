"""The trade-off table (performance against efficiency): its rows are the decoding paths that
``decoding.unavailable`` lets run here (the others kept with its reason), the exact row is
the reference (agreement 1, perplexity ratio 1, the perplexity of ``perplexity()`` itself),
the memory counts a copy's own tensors, the JSON has every field, the command prints an
aligned table or refuses bad input in one line, and the Evaluate tab's page fills its table
from a run on the worker."""

from __future__ import annotations

import json
import re

import pytest

from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext
from workbench.core.evaluation.metrics import perplexity
from workbench.core.evaluation.tradeoffs import (
    TradeoffSettings,
    agreement,
    corpus_tokens,
    own_bytes,
    tradeoffs,
)
from workbench.core.models import decoding
from workbench.core.models.loader import LoadOptions, load_model

SMALL = TradeoffSettings(new_tokens=6, prompt_tokens=48, text_tokens=160)


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")), LoadOptions(device="cpu"))


@pytest.fixture
def native_bf16(monkeypatch):
    """As on a CPU with AVX-512 BF16 (this one lacks it): the int8 and bf16 paths run."""
    monkeypatch.setattr(decoding, "cpu_has_native_bf16", lambda: True)


def test_the_rows_are_the_paths_that_can_run_here(llama):
    result = tradeoffs(llama, SMALL)
    assert [r.key for r in result.rows] == ["exact · float32", "int8 · float32",
                                           "bf16 · float32", "compiled · float32"]
    for row in result.rows[1:3]:
        why = decoding.unavailable(row.path, llama.model)
        assert row.skipped == (why or "")
        assert (row.perplexity is None) == bool(why)
    compiled = result.rows[3]
    assert compiled.skipped.startswith("not asked for") and compiled.decode_tokens_per_second \
        is None
    assert result.reference == "exact · float32" and result.reference_note == ""


def test_the_exact_row_is_the_reference_and_its_perplexity_is_perplexitys(llama):
    result = tradeoffs(llama, SMALL)
    exact = result.row("exact · float32")
    assert exact.agreement == 1.0 and exact.perplexity_ratio == 1.0
    assert exact.same_lead == len(exact.token_ids) == SMALL.new_tokens
    text, ids = corpus_tokens(llama.tokenizer, SMALL.text_tokens)
    assert result.text_tokens == len(ids) == SMALL.text_tokens
    assert result.window == 128  # the tiny model's context: a sliding window
    assert exact.perplexity == perplexity(llama, text, result.window).perplexity
    assert result.prompt_tokens == SMALL.prompt_tokens
    assert exact.weight_bytes == sum(p.numel() * p.element_size() for p in
                                     llama.model.parameters()) + sum(
        b.numel() * b.element_size() for b in llama.model.buffers())
    assert exact.decode_tokens_per_second > 0 and exact.prompt_tokens_per_second > 0
    assert 0 < exact.decode_cpu_per_wall and 0 < exact.prompt_cpu_per_wall
    assert exact.peak_increase_bytes >= 0 and result.peak_kind == "RSS"


def test_with_native_bfloat16_the_int8_and_bf16_rows_are_measured(llama, native_bf16):
    result = tradeoffs(llama, SMALL)
    exact, int8, bf16 = (result.row(f"{p} · float32") for p in ("exact", "int8", "bf16"))
    assert not int8.skipped and not bf16.skipped
    for row in (int8, bf16):
        assert row.label == decoding.LABELS[row.path]
        assert row.perplexity_ratio == pytest.approx(row.perplexity / exact.perplexity)
        assert row.perplexity_ratio == pytest.approx(1.0, abs=0.05)
        assert 0.0 <= row.agreement <= 1.0 and len(row.token_ids) == SMALL.new_tokens
        expected, lead = agreement(row.token_ids, exact.token_ids)
        assert (row.agreement, row.same_lead) == (expected, lead)
    # a copy counts its own tensors: int8 and bfloat16 copies take less than float32
    assert 0 < int8.weight_bytes < bf16.weight_bytes < exact.weight_bytes
    assert llama._decoder is None or llama._decoder[0] not in ("int8", "bf16")  # untouched


def test_a_copy_counts_only_its_own_tensors(llama):
    copy = decoding.build("bf16", llama.model)
    assert own_bytes(llama.model) == own_bytes(llama.model, llama.model)
    assert own_bytes(copy, llama.model) == pytest.approx(own_bytes(llama.model) / 2, rel=0.05)


def test_agreement_counts_positions_and_the_lead():
    assert agreement([1, 2, 3, 4], [1, 2, 3, 4]) == (1.0, 4)
    assert agreement([1, 2, 9, 4], [1, 2, 3, 4]) == (0.75, 2)
    assert agreement([1, 2], [1, 2, 3, 4]) == (0.5, 2)  # a row that stopped early
    assert agreement([], []) == (1.0, 0)


def test_the_json_has_every_field(llama):
    data = json.loads(json.dumps(tradeoffs(llama, SMALL).to_dict()))
    assert {"model", "device", "settings", "rows", "prompt_tokens", "text_tokens", "window",
            "decode_prompt", "reference", "reference_note", "peak_kind", "notes",
            "seconds"} <= set(data)
    assert data["settings"] == {"new_tokens": 6, "prompt_tokens": 48, "text_tokens": 160}
    row = data["rows"][0]
    assert {"key", "path", "weights", "label", "storage", "skipped",
            "decode_tokens_per_second", "decode_cpu_per_wall", "prompt_tokens_per_second",
            "prompt_cpu_per_wall", "weight_bytes", "peak_increase_bytes", "perplexity",
            "perplexity_ratio", "agreement", "same_lead", "token_ids", "note"} <= set(row)


def test_bad_settings_and_models_are_refused(llama, tiny):
    with pytest.raises(WorkbenchError, match="The new tokens"):
        tradeoffs(llama, TradeoffSettings(new_tokens=0))
    with pytest.raises(WorkbenchError, match="context"):
        tradeoffs(llama, TradeoffSettings(new_tokens=200))
    encoder = load_model(str(tiny("bert")), LoadOptions(device="cpu"))
    with pytest.raises(WorkbenchError, match="trade-off table"):
        tradeoffs(encoder, SMALL)


def test_cancel_stops_the_table(llama):
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        tradeoffs(llama, SMALL, JobContext(cancel=cancel))


# --- the command --------------------------------------------------------------------------------
def _run(capsys, *argv):
    from workbench.cli import build_parser, dispatch

    try:
        code = dispatch(build_parser().parse_args([str(a) for a in argv]))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_prints_an_aligned_table_and_json(tiny, capsys):
    common = ["tradeoffs", "--model", tiny("llama"), "--device", "cpu", "--new-tokens", 4,
              "--prompt-tokens", 32, "--text-tokens", 64]
    code, out, err = _run(capsys, *common)
    assert code == 0, err
    lines = out.splitlines()
    header, exact = lines[0], lines[1]
    assert header.split()[:4] == ["path", "storage", "decode", "tok/s"]
    assert exact.startswith("exact") and len(exact) <= len(header)
    values = re.split(r"\s{2,}", exact)
    assert len(values) == 12 and values[:2] == ["exact", "float32"]
    for title, value in (("perplexity", values[8]), ("lead", values[11])):
        end = header.index(title) + len(title)  # numbers right-aligned under their title
        assert exact[end - len(value):end] == value
    assert "reference (× ref, agreement): exact · float32" in out
    assert "compiled · float32: not asked for" in out
    code, out, err = _run(capsys, *common, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["rows"][0]["agreement"] == 1.0 and data["settings"]["new_tokens"] == 4


@pytest.mark.parametrize("extra, words", [
    (["--new-tokens", 1], "--new-tokens"),
    (["--prompt-tokens", 0], "--prompt-tokens"),
    (["--text-tokens", 99999], "--text-tokens"),
    (["--model", " "], "--model"),
    (["--weights", "int3"], "weights"),
    (["--device", "tpu"], "device"),
])
def test_bad_arguments_give_one_line_before_any_model_loads(capsys, monkeypatch, extra, words):
    import workbench.core.models.loader as loader

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loader, "load_model", no_load)
    code, out, err = _run(capsys, "tradeoffs", *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]


def test_a_model_that_is_not_there_is_one_line(capsys, tmp_path):
    code, out, err = _run(capsys, "tradeoffs", "--model", tmp_path / "nowhere")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")


# --- the page -----------------------------------------------------------------------------------
@pytest.fixture
def worker(qtbot):
    from workbench.ui.common.worker import ModelWorker

    w = ModelWorker()
    yield w
    assert w.shutdown(5000)


def test_the_page_fills_its_table_from_a_run_on_the_worker(qtbot, worker, tiny):
    from PySide6.QtCore import Qt

    from workbench.ui.evaluation.tab import EvaluateTab

    tab = EvaluateTab(worker)
    qtbot.addWidget(tab)
    worker.model_changed.connect(tab.set_model)
    tab.resize(1280, 760)
    tab.show()
    page = tab.tradeoffs_page
    tab.modes.setCurrentWidget(page)
    assert tab.modes.tabText(tab.modes.indexOf(page)) == "Trade-offs"
    handle = worker.submit_load(str(tiny("llama")), LoadOptions(device="cpu"))
    with qtbot.waitSignal(handle.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: page.loaded is not None, timeout=5000)
    page.new_tokens.setValue(4)
    page.prompt_tokens.setValue(32)
    page.text_tokens.setValue(64)
    page.start()
    assert page.run_slot.running and not page.run_button.isEnabled()
    qtbot.waitUntil(lambda: not page.run_slot.running, timeout=60000)
    result = page.result
    assert result is not None and page.table.rowCount() == len(result.rows) == 4
    cells = [[page.table.item(r, c).text() for c in range(page.table.columnCount())]
             for r in range(page.table.rowCount())]
    assert [row[0] for row in cells] == ["exact", "int8", "bf16", "compiled"]
    data = [page.table.item(0, c).data(Qt.ItemDataRole.DisplayRole) for c in (9, 10)]
    assert data == [1.0, 1.0]  # the exact row: its perplexity ratio and agreement
    assert cells[0][8] == f"{result.rows[0].perplexity:.3f}".rstrip("0").rstrip(".")
    assert cells[3][-1].startswith("not asked for")
    assert result.settings["new_tokens"] == 4 and "exact · float32" in page.numbers.text()
    assert tab.entries[-1].kind == "tradeoffs"
    assert page.run_button.isEnabled() and page.status.text().startswith("Done")


def test_the_page_cancels_its_run(qtbot, worker, tiny):
    from workbench.ui.evaluation.tab import EvaluateTab

    tab = EvaluateTab(worker)
    qtbot.addWidget(tab)
    worker.model_changed.connect(tab.set_model)
    handle = worker.submit_load(str(tiny("llama")), LoadOptions(device="cpu"))
    with qtbot.waitSignal(handle.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: tab.tradeoffs_page.loaded is not None, timeout=5000)
    page = tab.tradeoffs_page
    page.start()
    page.run_slot.cancel()
    qtbot.waitUntil(lambda: not page.run_slot.running, timeout=60000)
    assert page.status.text() == "Cancelled." and page.result is None
