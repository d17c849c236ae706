"""The sampler-stage inspector of the Generate tab: a generated step's distribution after each
processor of the chain, checked against transformers' own warpers applied in order."""

import pytest

from workbench.core.generation.settings import SamplingSettings, sampler_chain
from workbench.ui.common.stale import PREVIOUS_RUN
from workbench.ui.shell.main_window import MainWindow


@pytest.fixture
def window(qtbot, tiny):
    w = MainWindow(autoload=False)
    w.persist = False
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    w.load_model(str(tiny("llama")))
    qtbot.waitUntil(lambda: not w.loading and w.tab_pages[0].single.stage_inspector is not None,
                    timeout=60000)
    return w


@pytest.fixture
def tab(window):
    t = window.tab_pages[0]
    t.prompt.setPlainText("the cat sat on")
    t.controls.chat.setChecked(False)
    t.controls.max_new.setValue(6)
    t.controls.sample.setChecked(True)
    t.controls.temperature.setValue(0.8)
    t.controls.top_k.setValue(20)
    t.controls.top_p.setValue(0.6)
    return t


def run_generation(qtbot, tab):
    tab.start()
    qtbot.waitUntil(lambda: not tab.single.run_slot.running, timeout=30000)


def reference_stages(folder, prefix, settings):
    """Each stage's distribution as transformers' own warpers make it, applied in order to
    the model's last logits: (name, probabilities) from the raw one on."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([prefix])
    with torch.no_grad():
        scores = model(ids).logits[0, -1].float().reshape(1, -1)
    stages = [("raw", torch.softmax(scores[0], -1))]
    for name, warper in (("temperature", TemperatureLogitsWarper(settings.temperature)),
                         ("top_k", TopKLogitsWarper(settings.top_k)),
                         ("top_p", TopPLogitsWarper(settings.top_p))):
        scores = warper(ids, scores.clone())
        stages.append((name, torch.softmax(scores[0], -1)))
    return stages


def test_stages_of_a_step_match_transformers_warpers(qtbot, tab, tiny):
    single = tab.single
    inspector = single.stage_inspector
    with qtbot.capture_exceptions() as exceptions:
        assert inspector.placeholder.currentWidget() is inspector.placeholder.note
        assert not single.stages_button.isEnabled()  # nothing selected yet
        run_generation(qtbot, tab)
        assert not single.stages_button.isEnabled()
        single.select_step(3)
        assert single.stages_button.isEnabled()
        single.stages_button.click()
        assert single.lower_stack.currentWidget() is single.stages_holder
        qtbot.waitUntil(lambda: not single.stage_slot.running and inspector.inspection is not None,
                        timeout=30000)
    assert not exceptions

    result, settings = single.result, tab.controls.settings()
    step = single.current_steps()[3]
    prefix = result.prompt_token_ids + result.token_ids[:3]
    reference = reference_stages(tiny("llama"), prefix, settings)
    rows = inspector.rows()
    # the chain's order: raw, then the processors as generation applies them
    expected_names = ["raw"] + [name for name, _ in sampler_chain(settings)]
    assert [r[0] for r in rows] == expected_names == [name for name, _ in reference]
    for (name, kept, _, _, rank, chosen_p), (_, p) in zip(rows, reference, strict=True):
        assert kept == int((p > 0).sum()), name
        assert chosen_p == pytest.approx(float(p[step.token_id]), abs=1e-5), name
        assert rank == (int((p > p[step.token_id]).sum()) + 1 if p[step.token_id] > 0 else None)
    # the last stage is what the token was sampled from during the generation
    assert rows[-1][5] == pytest.approx(step.probability, abs=1e-5)
    assert "the run's settings" in inspector.header.text()

    # what a user sees: one chart per stage, in that order, with its numbers in its title
    panels = [panel for panel in inspector.panels if panel.isVisible()]
    assert len(panels) == len(rows)
    for number, (panel, row) in enumerate(zip(panels, rows, strict=True)):
        title = panel.title.text()
        assert title.startswith(f"<b>{number}. ")
        assert f"kept {row[1]:,} ({row[2]:.1%})" in title and f"{row[3]:.2f} bits" in title
        # each bar is that candidate's probability after the stage (most likely raw first)
        p = reference[number][1]
        raw = reference[0][1]
        shown = panel.shown_rows()
        ids = [inspector.inspection.token_ids[r] for r in shown]
        assert list(panel.bars.opts["width"]) == pytest.approx(
            [float(p[i]) for i in ids], abs=1e-5)
        assert list(panel.raw_bars.opts["width"]) == pytest.approx(
            [float(raw[i]) for i in ids], abs=1e-5)
        assert step.token_id in ids  # the chosen token is always shown, outlined
        assert list(panel.chosen.opts["y"]) == [ids.index(step.token_id)]
    # the charts sit side by side in one row, each with room for its candidates
    assert len({panel.y() for panel in panels}) == 1
    assert all(len(panel.shown_rows()) >= 5 for panel in panels)


def test_stages_are_marked_stale_when_the_run_changes(qtbot, tab):
    single = tab.single
    inspector = single.stage_inspector
    with qtbot.capture_exceptions() as exceptions:
        run_generation(qtbot, tab)
        single.select_step(1)
        single.stages_button.setChecked(True)
        qtbot.waitUntil(lambda: inspector.inspection is not None and not single.stage_slot.running,
                        timeout=30000)
        assert inspector.isEnabled()
        first = inspector.rows()
        tab.controls.seed.setValue(7)
        run_generation(qtbot, tab)
        # the stages shown are of the run before: greyed out and said to be
        assert not inspector.isEnabled()
        assert PREVIOUS_RUN in inspector.header.text()
        assert inspector.rows() == first
        assert single.stages_button.isEnabled()  # still down: it can be raised
        # a click on a token of the new run shows its stages, no longer greyed
        single.select_step(2)
        qtbot.waitUntil(lambda: not single.stage_slot.running and inspector.isEnabled()
                        and inspector.inspection.step == 2, timeout=30000)
        assert "Step 2" in inspector.header.text()
        single.stages_button.setChecked(False)
        assert single.lower_stack.currentWidget() is not single.stages_holder
    assert not exceptions


def test_a_branch_step_after_the_branch_point_uses_the_controls(qtbot, tab):
    single = tab.single
    with qtbot.capture_exceptions() as exceptions:
        run_generation(qtbot, tab)
        single.select_step(1)
        candidates = single.current_steps()[1].candidates
        other = next(i for i, c in enumerate(candidates)
                     if c.token_id != single.current_steps()[1].token_id)
        single.branch_from(other)
        qtbot.waitUntil(lambda: not single.branch_slot.running, timeout=30000)
        assert single.sequence_picker.currentIndex() == 1  # the branch is shown
        single.select_step(3)
        single.stages_button.setChecked(True)
        qtbot.waitUntil(lambda: not single.stage_slot.running
                        and single.stage_inspector.inspection is not None, timeout=30000)
    assert not exceptions
    assert "controls' current settings" in single.stage_inspector.header.text()
    assert isinstance(single.stage_inspector.inspection.settings, SamplingSettings)


def test_tokens_that_look_like_markup_are_shown_as_text(qtbot):
    from PySide6.QtCore import Qt

    from workbench.core.generation.settings import Stage
    from workbench.core.generation.step_inspection import StageInspection
    from workbench.ui.generation.stage_inspector import StageInspector

    inspector = StageInspector()
    qtbot.addWidget(inspector)
    inspector.resize(900, 260)
    inspector.show()
    assert inspector.placeholder.currentWidget() is inspector.placeholder.note
    stages = [Stage("raw", 3, 1.0, 1.5, 2, 0.3), Stage("top_k", 2, 0.7, 0.9, 2, 0.4)]
    inspector.show_inspection(StageInspection(
        4, 7, "<s>", stages, [5, 7, 9], ["</b>x", "<s>", " a\n"],
        [[0.5, 0.3, 0.2], [0.6, 0.4, 0.0]], SamplingSettings(top_k=2), "the run's settings"))
    assert inspector.header.textFormat() == Qt.TextFormat.PlainText
    assert "chose <s>" in inspector.header.text()
    first = inspector.panels[0]
    qtbot.waitUntil(lambda: first.labels == ["</b>x", "<s>", "·a⏎"], timeout=3000)
    assert "&lt;" not in first.labels[0]  # an axis label is drawn as text
    assert "removed" in inspector.panels[1].tips[2]
    assert inspector.panels[1].title.text().startswith("<b>1. top-k</b>")
