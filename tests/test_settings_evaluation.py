"""One description of every setting, for the evaluation's remaining groups: the sampling
sweep's (samples per cell, new tokens, seed), generate-then-score's (new tokens, batch size,
seed), the classifier evaluation's and multiple choice's (batch size, length). For each
number setting, the core, the command's option and the Evaluate tab's box accept and refuse
the same values at and just past each end of its range."""

from __future__ import annotations

import json

import pytest

from tests.test_settings import assert_agree
from workbench.cli import build_parser
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import described
from workbench.core.evaluation.choice import ChoiceSettings
from workbench.core.evaluation.classification import ClassifierSettings
from workbench.core.evaluation.generate_score import GenerateScoreSettings
from workbench.core.evaluation.sweep import SweepSettings

# each group: its command's arguments (nothing is read or loaded by the checks), the check
# of its options, the page of the Evaluate tab and the prefix of its boxes' object names
GROUPS = {
    "SweepSettings": (SweepSettings, ["sweep", "--prompt", "x", "--x", "temperature=1",
                                      "--y", "top_p=1"], "sweep_settings", "sweep_page",
                      "sweep"),
    "GenerateScoreSettings": (GenerateScoreSettings, ["evaluate", "generate", "--file", "p.tsv"],
                              "generate_settings", "generate_page", "score"),
    "ClassifierSettings": (ClassifierSettings, ["evaluate", "classify", "--file", "l.csv"],
                           "classifier_settings", "classify_page", "classify"),
    "ChoiceSettings": (ChoiceSettings, ["evaluate", "choice", "--file", "i.jsonl"],
                       "choice_settings", "choice_page", "choice"),
}
# the sweep's samples per cell keep their box's saved name
OBJECT_NAMES = {("sweep", "n"): "sweep-samples"}
NUMBERS = [(group, f, meta) for group, (cls, *_rest) in GROUPS.items()
           for f, meta in described(cls)]


def object_name(prefix: str, name: str) -> str:
    return OBJECT_NAMES.get((prefix, name), f"{prefix}-{name.replace('_', '-')}")


def whole_probes(meta) -> list[int]:
    """Each end of the range and one past it."""
    return sorted({int(v) for end in (meta.low, meta.high) for v in (end - 1, end, end + 1)})


def core_accepts(cls: type, name: str, value: int) -> bool:
    try:
        cls(**{name: value}).validate()
    except WorkbenchError:
        return False
    return True


def cli_check(group: str):
    from workbench.cli import evaluate, sweep

    name = GROUPS[group][2]
    return getattr(sweep if name == "sweep_settings" else evaluate, name)


def cli_accepts(group: str, name: str, value: int) -> bool:
    """As the command checks its options before it reads a file or loads a model."""
    argv = [*GROUPS[group][1], f"--{name.replace('_', '-')}={value}"]
    try:
        cli_check(group)(build_parser().parse_args(argv)).validate()
    except WorkbenchError:
        return False
    return True


@pytest.fixture
def evaluate_tab(qtbot):
    from workbench.ui.common.worker import ModelWorker
    from workbench.ui.evaluation.tab import EvaluateTab

    worker = ModelWorker()
    tab = EvaluateTab(worker)
    qtbot.addWidget(tab)
    yield tab
    assert worker.shutdown(5000)


def box_of(tab, group: str, name: str):
    from PySide6.QtWidgets import QAbstractSpinBox

    _, _, _, page, prefix = GROUPS[group]
    return getattr(tab, page).findChild(QAbstractSpinBox, object_name(prefix, name))


@pytest.mark.parametrize("group, f, meta", NUMBERS,
                         ids=[f"{g}.{f.name}" for g, f, _ in NUMBERS])
def test_the_options_forms_and_core_accept_the_same_values(qtbot, evaluate_tab, group, f,
                                                           meta):
    from workbench.ui.common.setting_widgets import box_value

    cls = GROUPS[group][0]
    box = box_of(evaluate_tab, group, f.name)
    assert box is not None, (group, f.name)
    assert_agree(f.name, meta, whole_probes(meta), lambda v: core_accepts(cls, f.name, v),
                 lambda v: cli_accepts(group, f.name, v), box,
                 lambda box: box_value(cls, f.name, box))
    if meta.auto:  # below the range: the app's own choice, everywhere
        box.setValue(int(meta.low) - 1)
        assert box_value(cls, f.name, box) is None and box.text() == meta.auto
        assert core_accepts(cls, f.name, None)


@pytest.mark.parametrize("group", list(GROUPS))
def test_the_defaults_are_the_same_everywhere(qtbot, evaluate_tab, group):
    """The option's default, the box's first value and the core's default agree."""
    from workbench.ui.common.setting_widgets import box_value

    cls, argv, *_ = GROUPS[group]
    options = cli_check(group)(build_parser().parse_args(argv))
    assert options == cls()
    form = cls(**{f.name: box_value(cls, f.name, box_of(evaluate_tab, group, f.name))
                  for f, _ in described(cls)})
    assert form == cls()
    cls().validate()


def test_the_defaults_are_todays():
    assert SweepSettings() == SweepSettings(n=4, max_new_tokens=32, seed=0)
    assert GenerateScoreSettings() == GenerateScoreSettings(max_new_tokens=48, batch_size=8,
                                                            seed=0)
    assert ClassifierSettings() == ClassifierSettings(batch_size=32, max_length=512)
    assert ChoiceSettings() == ChoiceSettings(batch_size=1, max_length=None)


@pytest.mark.parametrize("argv, message", [
    (GROUPS["SweepSettings"][1] + ["--n", "0"], "--n must be at least 1, not 0."),
    (GROUPS["SweepSettings"][1] + ["--n", "10001"], "--n can be at most 10,000"),
    (GROUPS["SweepSettings"][1] + ["--max-new-tokens", "0"],
     "--max-new-tokens must be at least 1, not 0."),
    (GROUPS["SweepSettings"][1] + ["--seed", "-1"], "--seed must be between 0 and 4294967295"),
    (GROUPS["GenerateScoreSettings"][1] + ["--batch-size", "0"],
     "--batch-size must be at least 1, not 0."),
    (GROUPS["ClassifierSettings"][1] + ["--max-length", "7"],
     "--max-length must be at least 8, not 7."),
    (GROUPS["ChoiceSettings"][1] + ["--batch-size", "0"],
     "--batch-size must be at least 1, not 0."),
    (GROUPS["ChoiceSettings"][1] + ["--max-length", "1"],
     "--max-length must be at least 2, not 1."),
])
def test_an_option_out_of_range_is_named(argv, message):
    args = build_parser().parse_args(argv)
    check = cli_check(next(g for g, (_, a, *_r) in GROUPS.items() if argv[:len(a)] == a))
    with pytest.raises(WorkbenchError) as caught:
        check(args)
    assert str(caught.value).startswith(message)


def test_the_core_functions_check_their_settings_first():
    """Each refuses a number outside its range before it looks at the model."""
    from workbench.core.evaluation.choice import score_choices
    from workbench.core.evaluation.classification import evaluate_classifier
    from workbench.core.evaluation.generate_score import generate_and_score
    from workbench.core.evaluation.sweep import parse_axis, sweep
    from workbench.core.generation.settings import SamplingSettings

    x, y = parse_axis("temperature=1"), parse_axis("top_p=1")
    with pytest.raises(WorkbenchError, match="The number of samples per cell must be at "
                                             "least 1, not 0"):
        sweep(None, "p", x, y, n=0)
    with pytest.raises(WorkbenchError, match="The seed must be between 0 and 4294967295"):
        sweep(None, "p", x, y, seed=2**32)
    with pytest.raises(WorkbenchError, match="The batch size must be at least 1, not 0"):
        generate_and_score(None, ["a"], [["a"]], SamplingSettings(), batch_size=0)
    with pytest.raises(WorkbenchError, match="The batch size can be at most 10,000"):
        generate_and_score(None, ["a"], [["a"]], SamplingSettings(), batch_size=10_001)
    with pytest.raises(WorkbenchError, match="The maximum length in tokens must be at least 8"):
        evaluate_classifier(None, "l.csv", max_length=4)
    with pytest.raises(WorkbenchError, match="The context must be at least 2, not 1"):
        score_choices(None, [], settings=ChoiceSettings(max_length=1))


def test_the_forms_refuse_before_a_job_starts(qtbot, evaluate_tab, monkeypatch):
    """A number the description refuses never reaches a job (set past the box's own range,
    as a saved value from an older version could be)."""
    errors = []
    for page in (evaluate_tab.sweep_page, evaluate_tab.generate_page,
                 evaluate_tab.classify_page, evaluate_tab.choice_page):
        monkeypatch.setattr(page, "show_error", lambda title, text: errors.append(text))
    for page, settings in ((evaluate_tab.sweep_page, "sweep_settings"),
                           (evaluate_tab.generate_page, "score_settings"),
                           (evaluate_tab.classify_page, "classifier_settings"),
                           (evaluate_tab.choice_page, "choice_settings")):
        good = getattr(page, settings)()
        bad = type(good)(**{**vars(good), "batch_size" if hasattr(good, "batch_size")
                            else "n": 0})
        monkeypatch.setattr(page, settings, lambda bad=bad: bad)
        page.start()
        assert page.run_slot.handle is None
    assert len(errors) == 4 and all("must be at least 1, not 0" in e for e in errors), errors


def test_choices_scored_in_batches_of_items_equal_one_item_at_a_time(tiny, tmp_path):
    from workbench.core.evaluation.choice import read_choice_items, score_choices
    from workbench.core.models.loader import load_model

    path = tmp_path / "items.jsonl"
    rows = [{"context": "the cat sat on the", "choices": ["mat", "sea is blue", "dog"],
             "answer": 0},
            {"context": "the sea is", "choices": ["blue", "green"], "answer": 1},
            {"context": "", "choices": ["world", "paris france"], "answer": 1},
            {"context": "a dog and a cat", "choices": ["sat on a mat", "in the sea"],
             "answer": 0},
            {"context": "the sun is", "choices": ["blue", "green", "tired", "a river"],
             "answer": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_model(str(tiny("gpt2")))
    items = read_choice_items(path)
    alone = score_choices(loaded, items)
    for batch_size in (2, 5, 64):
        batched = score_choices(loaded, items, settings=ChoiceSettings(batch_size=batch_size))
        for a, b in zip(alone.items, batched.items, strict=True):
            assert (a.line, a.pick, a.pick_norm) == (b.line, b.pick, b.pick_norm)
            assert b.loglikelihoods == pytest.approx(a.loglikelihoods, abs=1e-5)
    short = score_choices(loaded, items, settings=ChoiceSettings(max_length=4))
    assert short.notices and "(4 tokens)" in short.notices[0]
