"""One description of every setting: for each number setting of the decoding settings, the
command line, the Generate tab's form and the core accept and refuse the same values, at
and just past each end of the range the description gives."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.cli import build_parser
from workbench.cli.finetune import config_from_args
from workbench.cli.generate import _settings_from_args
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import described, kind
from workbench.core.generation.settings import SamplingSettings
from workbench.core.training.config import SCHEDULERS, FinetuneConfig

NUMBERS = [(f, meta) for f, meta in described(SamplingSettings)
           if kind(f) in (int, float) and not meta.choices]
# Settings checked against each other: a probe of one sets its partner so that only the
# probed value can be refused.
PARTNERS = {"dynatemp_low": {"dynatemp_high": 100.0}, "dynatemp_high": {"dynatemp_low": 0.01},
            "num_return_sequences": {"do_sample": True}}


def probes(f: dataclasses.Field, meta) -> list[float]:
    """Values at each end of the range, one step of the form's precision inside and outside
    it, and the default (the step: 1 for whole numbers, else 10**-decimals)."""
    step = 1 if kind(f) is int else 10.0 ** -meta.decimals
    values = {f.default}
    for end in (meta.low, meta.high):
        values |= {end - step, end, end + step}
    values = {round(v, meta.decimals) if kind(f) is float else int(v) for v in values}
    return sorted(values)


def in_range(meta, value: float) -> bool:
    """The range as the description states it, computed here from low/high and openness."""
    above = value > meta.low if meta.low_open else value >= meta.low
    below = value < meta.high if meta.high_open else value <= meta.high
    return above and below


def assert_agree(name: str, meta, values, core, cli, box=None, read=None) -> None:
    """At each value, the core and the command line (and the form's ``box``, read back by
    ``read``) accept it exactly when the description's range holds it."""
    for value in values:
        expected = in_range(meta, value)
        assert core(value) == expected, (name, value)
        assert cli(value) == expected, (name, value)
        if box is not None:
            box.setValue(value)  # a spin box clamps what its range refuses
            shown = read(box)
            assert (shown is not None and abs(shown - value) < 1e-9) == expected, \
                (name, value, shown)


def core_accepts(name: str, value: float) -> bool:
    try:
        SamplingSettings(**{name: value, **PARTNERS.get(name, {})}).validate()
    except WorkbenchError:
        return False
    return True


def cli_accepts(name: str, value: float) -> bool:
    argv = ["generate", "--prompt", "x", f"--{name.replace('_', '-')}={value}"]
    for partner, partner_value in PARTNERS.get(name, {}).items():
        if partner != "do_sample":
            argv.append(f"--{partner.replace('_', '-')}={partner_value}")
    args = build_parser().parse_args(argv)
    try:
        _settings_from_args(args).validate()
    except WorkbenchError:
        return False
    return True


@pytest.fixture
def controls(qtbot):
    from workbench.ui.generation.controls import DecodingControls

    widget = DecodingControls(lambda title, text: None)
    qtbot.addWidget(widget)
    return widget


@pytest.mark.parametrize("f, meta", NUMBERS, ids=[f.name for f, _ in NUMBERS])
def test_the_command_line_the_form_and_the_core_accept_the_same_values(f, meta, controls):
    assert_agree(f.name, meta, probes(f, meta), lambda v: core_accepts(f.name, v),
                 lambda v: cli_accepts(f.name, v), controls.boxes()[f.name],
                 lambda box: box.value())


def test_every_number_setting_of_the_core_has_a_control_and_an_option(controls):
    options = {a.dest for a in build_parser()._subparsers._group_actions[0]
               .choices["generate"]._actions}
    names = {f.name for f, _ in NUMBERS}
    assert names <= set(controls.boxes())
    assert names <= options


def test_the_mirostat_mode_offers_its_two_values_everywhere(controls):
    for value, expected in ((0, True), (1, False), (2, True), (3, False)):
        assert core_accepts("mirostat_mode", value) == expected
        assert cli_accepts("mirostat_mode", value) == expected
    controls.mirostat.setChecked(True)
    assert controls.settings().mirostat_mode == 2
    controls.mirostat.setChecked(False)
    assert controls.settings().mirostat_mode == 0


def test_a_seed_past_a_32_bit_integer_is_shown_and_read_back(controls):
    """The core's seeds reach 2**32 - 1; a Qt spin box holds a C int (2**31 - 1)."""
    settings = SamplingSettings(seed=2**32 - 1)
    controls.set_settings(settings)
    assert controls.settings().seed == 2**32 - 1
    assert isinstance(controls.settings().seed, int)


def test_a_slider_does_not_pull_a_value_past_its_reach_back(controls):
    """Temperature's slider spans 0-5; a temperature of 50 stays 50 in the box."""
    controls.set_settings(SamplingSettings(temperature=50.0))
    assert controls.settings().temperature == 50.0


# The fine-tuning run's settings: the Fine-tune form, ``finetune``'s options and the core.

FT_BASE = dict(task="lm", model="m", train_file="t.txt", output_dir="o")
FT_ARGV = ["finetune", "--task", "lm", "--model", "m", "--train", "t.txt", "--output", "o"]
# the number settings with a spin box of exactly their range and an option of their name
FT_NUMBERS = [(f, meta) for f, meta in described(FinetuneConfig)
              if kind(f) in (int, float) and not meta.choices
              and f.name != "max_steps"]
# an epoch count of 0 is a run only with a step limit
FT_PARTNERS = {"epochs": {"max_steps": 10}}


def ft_core_accepts(name: str, value: float) -> bool:
    try:
        FinetuneConfig(**FT_BASE, **{name: value, **FT_PARTNERS.get(name, {})}).validate()
    except WorkbenchError:
        return False
    return True


def ft_cli_accepts(name: str, value: float) -> bool:
    """As ``finetune`` checks its options before a run starts (nothing is run here)."""
    argv = [*FT_ARGV, f"--{name.replace('_', '-')}={value}"]
    for partner, partner_value in FT_PARTNERS.get(name, {}).items():
        argv.append(f"--{partner.replace('_', '-')}={partner_value}")
    try:
        config_from_args(build_parser().parse_args(argv)).validate()
    except WorkbenchError:
        return False
    return True


@pytest.fixture
def run_form(qtbot):
    from workbench.ui.training.form import RunForm

    class Form(RunForm):  # the tab's form part alone: its buttons are not pressed here
        loaded = None

        def __init__(self) -> None:
            self._build_form()

        def stop(self) -> None:
            pass

    form = Form()
    qtbot.addWidget(form.form_panel)
    return form


@pytest.mark.parametrize("f, meta", FT_NUMBERS, ids=[f.name for f, _ in FT_NUMBERS])
def test_the_finetune_options_form_and_core_accept_the_same_values(f, meta, run_form):
    assert_agree(f.name, meta, probes(f, meta), lambda v: ft_core_accepts(f.name, v),
                 lambda v: ft_cli_accepts(f.name, v), run_form.setting_boxes()[f.name],
                 lambda box: box.value())


def test_the_max_steps_are_by_epochs_below_1_everywhere(run_form):
    """The core's and the option's -1 is the form's 0 ("by epochs"); the top is the same."""
    meta = dict((f.name, m) for f, m in described(FinetuneConfig))["max_steps"]
    top = int(meta.high)
    for value, expected in ((-2, False), (-1, True), (0, True), (1, True), (top, True),
                            (top + 1, False)):
        assert ft_core_accepts("max_steps", value) == expected, value
        assert ft_cli_accepts("max_steps", value) == expected, value
    box = run_form.max_steps
    for value, shown in ((-1, 0), (0, 0), (1, 1), (top, top), (top + 1, top)):
        box.setValue(value)
        assert box.value() == shown, value
    box.setValue(0)
    assert box.text() == "by epochs" and run_form.config().max_steps == -1


def test_every_finetune_number_setting_has_a_control_and_an_option(run_form):
    options = {a.dest for a in build_parser()._subparsers._group_actions[0]
               .choices["finetune"]._actions}
    names = {f.name for f, _ in FT_NUMBERS} | {"max_steps"}
    assert names <= set(run_form.setting_boxes())
    assert names <= options
    for name, box in run_form.setting_boxes().items():  # the key of its saved value
        assert box.objectName() == ("train-seed" if name == "seed" else name.replace("_", "-"))


def test_the_validation_split_goes_from_the_form_and_the_option_into_the_run(run_form):
    assert run_form.validation_split.value() == pytest.approx(0.1)  # the core's default
    run_form.validation_split.setValue(0.25)
    assert run_form.config().validation_split == pytest.approx(0.25)
    run_form.validation_file.setText("v.txt")  # a validation file: nothing is held out
    assert not run_form.validation_split.isEnabled()
    run_form.validation_file.clear()
    assert run_form.validation_split.isEnabled()
    args = build_parser().parse_args([*FT_ARGV, "--validation-split", "0.3"])
    assert config_from_args(args).validation_split == pytest.approx(0.3)
    assert config_from_args(build_parser().parse_args(FT_ARGV)).validation_split == 0.1


def test_the_form_offers_the_cores_schedules(run_form):
    combo = run_form.scheduler
    assert [combo.itemText(i) for i in range(combo.count())] == list(SCHEDULERS)
    assert combo.currentText() == FinetuneConfig.__dataclass_fields__["lr_scheduler"].default


def test_the_forms_defaults_make_a_valid_run(run_form):
    config = run_form.config()
    config.validate()
    assert isinstance(config.seed, int) and config.seed == 42


def test_a_setting_left_to_the_app_is_none_everywhere(qtbot):
    """``auto``: None is the app's choice; the form shows it one step below the range."""
    from dataclasses import dataclass

    from workbench.core.common.settings import check_fields, setting
    from workbench.ui.common.setting_widgets import box_value, setting_box

    @dataclass
    class Window:
        size: int | None = setting(None, "The window", low=2, high=4096, auto="model context")

    check_fields(Window())  # None: the app's choice
    check_fields(Window(size=2))
    with pytest.raises(WorkbenchError, match="The window must be at least 2, not 1"):
        check_fields(Window(size=1))
    box = setting_box(Window, "size")
    qtbot.addWidget(box)
    assert box.text() == "model context" and box_value(Window, "size", box) is None
    box.setValue(64)
    assert box_value(Window, "size", box) == 64
    box.setValue(0)  # below the range: clamped to the automatic value, not to 2
    assert box_value(Window, "size", box) is None


# The attribution's settings: the attribution view's boxes, ``attribute``'s options and the core.

def attribution_numbers() -> list:
    from workbench.core.interpret.attribution_options import AttributionOptions

    return [(f, meta) for f, meta in described(AttributionOptions)
            if kind(f) in (int, float) and not meta.choices]


ATTR_NUMBERS = attribution_numbers()
# the view's box of each setting, by its object name: the view attributes a continuation or a
# sequence generated elsewhere, so it offers no number of tokens to generate
ATTR_BOXES = {"steps": "attribution-steps", "baseline_id": "attribution-baseline-id"}


def attr_probes(f: dataclasses.Field, meta) -> list[int]:
    """Each end of the range and one past it (these settings are whole numbers, None by
    default: the app's own choice)."""
    return sorted({int(v) for end in (meta.low, meta.high) for v in (end - 1, end, end + 1)})


def attr_core_accepts(name: str, value: int | None) -> bool:
    from workbench.core.interpret.attribution_options import AttributionOptions

    try:
        AttributionOptions(**{name: value}).validate()
    except WorkbenchError:
        return False
    return True


def attr_cli_accepts(name: str, value: int | None) -> bool:
    """As ``attribute`` checks its options before it loads a model (nothing is loaded here)."""
    from workbench.cli.attribute import options_from_args

    argv = ["attribute", "--model", "m", "--prompt", "x"]
    if value is not None:
        argv.append(f"--{name.replace('_', '-')}={value}")
    try:
        options_from_args(build_parser().parse_args(argv)).validate()
    except WorkbenchError:
        return False
    return True


@pytest.fixture
def attribution_view(qtbot):
    from workbench.ui.interpret.attribution_view import AttributionView

    view = AttributionView(object())  # the worker is not asked for anything here
    qtbot.addWidget(view)
    return view


@pytest.mark.parametrize("f, meta", ATTR_NUMBERS, ids=[f.name for f, _ in ATTR_NUMBERS])
def test_the_attribution_options_view_and_core_accept_the_same_values(f, meta,
                                                                       attribution_view):
    from PySide6.QtWidgets import QAbstractSpinBox

    from workbench.core.interpret.attribution_options import AttributionOptions
    from workbench.ui.common.setting_widgets import box_value

    box = attribution_view.findChild(QAbstractSpinBox, ATTR_BOXES.get(f.name, "-"))
    assert (box is None) == (f.name not in ATTR_BOXES)
    assert_agree(f.name, meta, attr_probes(f, meta), lambda v: attr_core_accepts(f.name, v),
                 lambda v: attr_cli_accepts(f.name, v), box,
                 lambda box: box_value(AttributionOptions, f.name, box))
    assert attr_core_accepts(f.name, None) and attr_cli_accepts(f.name, None)  # the default


def test_every_attribution_number_setting_has_an_option_and_the_view_its_box(
        attribution_view):
    from workbench.core.interpret.attribution_options import DEFAULT_STEPS

    options = {a.dest for a in build_parser()._subparsers._group_actions[0]
               .choices["attribute"]._actions}
    assert {f.name for f, _ in ATTR_NUMBERS} == {"steps", "baseline_id", "max_new_tokens"}
    assert {f.name for f, _ in ATTR_NUMBERS} <= options
    assert attribution_view.steps.objectName() == "attribution-steps"
    assert attribution_view.steps.value() == DEFAULT_STEPS  # shown as today
    attribution_view.steps.setValue(0)  # below the range: captum's own default, None
    assert attribution_view.steps.text() == f"{DEFAULT_STEPS} (captum's default)"
    assert attribution_view.baseline_id.value() == 0  # "token id…" starts at the first id


def test_a_baseline_token_id_is_one_setting_in_the_view_the_option_and_the_core(
        attribution_view):
    """The id's range ends at MAX_TOKEN_ID everywhere; the model's own number of ids is
    checked once it is loaded. ``--baseline 17`` is the id 17, checked as ``--baseline-id``."""
    from workbench.cli.attribute import options_from_args
    from workbench.core.interpret.attribution_options import MAX_TOKEN_ID, AttributionOptions

    view = attribution_view
    view.baseline.setCurrentIndex(3)  # token id…
    view.baseline_id.setValue(17)
    assert view.options() == AttributionOptions("ig", 50, None, 17)
    assert view.options().chosen_baseline() == 17
    view.baseline.setCurrentIndex(1)  # end-of-text: the id box is not read
    assert view.options().chosen_baseline() == "eos"
    view.method.setCurrentIndex(1)  # input × gradient: no baseline, no steps
    assert view.options() == AttributionOptions("ixg")
    for baseline in ("17", 17):
        assert attr_core_accepts("baseline", baseline)
    for baseline in (str(MAX_TOKEN_ID + 1), -1):
        assert not attr_core_accepts("baseline", baseline)
    with pytest.raises(WorkbenchError, match="The baseline token id must be 0 or more, not -1"):
        AttributionOptions(baseline=-1).validate()
    with pytest.raises(WorkbenchError, match="not both"):
        AttributionOptions(baseline="eos", baseline_id=3).validate()
    with pytest.raises(SystemExit):  # argparse: one or the other
        build_parser().parse_args(["attribute", "--model", "m", "--prompt", "x",
                                   "--baseline", "eos", "--baseline-id", "3"])
    args = build_parser().parse_args(["attribute", "--model", "m", "--prompt", "x",
                                      "--baseline-id", "3"])
    assert options_from_args(args).chosen_baseline() == 3


def test_the_view_asks_for_a_token_id_when_its_box_is_below_the_range(attribution_view):
    view, errors = attribution_view, []
    view._show_error = lambda title, text: errors.append(text)
    view.set_continuation("the cat", " sat")
    view.baseline.setCurrentIndex(3)  # token id…
    view.baseline_id.setValue(-1)  # one step below 0: the box's "none"
    assert view.baseline_id.text() == "none (pad, eos or zero)"
    view.run()
    assert errors == ["Choose the baseline token id (0 or more), or a pad, end-of-text or "
                      "zero baseline."]
    assert not view.run_slot.running


# Perplexity's window and the attention's numbers of tokens: the Evaluate and Attention tabs'
# boxes, the ``evaluate perplexity`` and ``attention`` options and the core.

def window_numbers() -> list:
    from workbench.core.evaluation.metrics import PerplexitySettings
    from workbench.core.interpret.attention import AttentionSettings

    return [(cls, f, meta) for cls in (PerplexitySettings, AttentionSettings)
            for f, meta in described(cls)]


WINDOW_NUMBERS = window_numbers()
# a probe of the stride sets the widest window, so that only the probed value can be refused
WINDOW_PARTNERS = {"stride": {"max_length": 131072}}
WINDOW_ARGV = {"PerplexitySettings": ["evaluate", "perplexity", "--file", "t.txt"],
               "AttentionSettings": ["attention", "--text", "x"]}


def whole_probes(meta) -> list[int]:
    """Each end of a whole-number range and one past it."""
    return sorted({int(v) for end in (meta.low, meta.high) for v in (end - 1, end, end + 1)})


def window_core_accepts(cls: type, name: str, value: int) -> bool:
    try:
        cls(**{name: value, **WINDOW_PARTNERS.get(name, {})}).validate()
    except WorkbenchError:
        return False
    return True


def window_cli_accepts(cls: type, name: str, value: int) -> bool:
    """As ``evaluate perplexity`` and ``attention`` check their options before they load a
    model (nothing is loaded here)."""
    from workbench.cli.attention import attention_settings
    from workbench.cli.evaluate import perplexity_settings

    argv = [*WINDOW_ARGV[cls.__name__], f"--{name.replace('_', '-')}={value}"]
    for partner, partner_value in WINDOW_PARTNERS.get(name, {}).items():
        argv.append(f"--{partner.replace('_', '-')}={partner_value}")
    check = perplexity_settings if cls.__name__ == "PerplexitySettings" else attention_settings
    try:
        check(build_parser().parse_args(argv))
    except WorkbenchError:
        return False
    return True


@pytest.fixture
def window_tabs(qtbot):
    from workbench.ui.common.worker import ModelWorker
    from workbench.ui.evaluation.tab import EvaluateTab
    from workbench.ui.interpret.tab import AttentionTab

    worker = ModelWorker()
    evaluate, attention = EvaluateTab(worker), AttentionTab(worker)
    qtbot.addWidget(evaluate)
    qtbot.addWidget(attention)
    yield {"PerplexitySettings": (evaluate, {"max_length": evaluate.window_size,
                                             "stride": evaluate.stride}),
           "AttentionSettings": (attention, {"max_tokens": attention.max_tokens,
                                             "page_tokens": attention.page_tokens})}
    assert worker.shutdown(5000)


@pytest.mark.parametrize("cls, f, meta", WINDOW_NUMBERS,
                         ids=[f.name for _, f, _ in WINDOW_NUMBERS])
def test_the_window_options_forms_and_core_accept_the_same_values(cls, f, meta, window_tabs):
    from workbench.ui.common.setting_widgets import box_value

    _, boxes = window_tabs[cls.__name__]
    box = boxes[f.name]
    assert box.objectName() == f.name.replace("_", "-")  # the key of its saved value
    assert_agree(f.name, meta, whole_probes(meta), lambda v: window_core_accepts(cls, f.name, v),
                 lambda v: window_cli_accepts(cls, f.name, v), box,
                 lambda box: box_value(cls, f.name, box))
    if meta.auto:  # below the range: the app's own choice
        box.setValue(int(meta.low) - 1)
        assert box_value(cls, f.name, box) is None and box.text() == meta.auto


def test_the_perplexity_form_says_the_automatic_values_and_reads_them_as_none(window_tabs):
    tab, _ = window_tabs["PerplexitySettings"]
    assert tab.window_size.text() == "model context"
    assert tab.stride.text() == "half the window"
    assert tab.perplexity_settings() == type(tab.perplexity_settings())(None, None)
    tab.window_size.setValue(1)  # a window of one token is no window: the model's context
    assert tab.window_size.text() == "model context"
    assert tab.perplexity_settings().max_length is None


def test_a_stride_beyond_the_window_is_refused_by_the_form_the_option_and_the_core(
        window_tabs):
    from workbench.cli.evaluate import perplexity_settings
    from workbench.core.evaluation.metrics import PerplexitySettings

    message = "The stride (16) is larger than the window (8)"
    with pytest.raises(WorkbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PerplexitySettings(max_length=8, stride=16).validate()
    args = build_parser().parse_args([*WINDOW_ARGV["PerplexitySettings"], "--max-length", "8",
                                      "--stride", "16"])
    with pytest.raises(WorkbenchError, match=r"The stride \(16\) is larger"):
        perplexity_settings(args)
    tab, _ = window_tabs["PerplexitySettings"]
    tab.window_size.setValue(8)
    tab.stride.setValue(16)
    with pytest.raises(WorkbenchError, match=r"The stride \(16\) is larger"):
        tab.perplexity_settings().validate()


def test_the_attention_forms_defaults_are_the_cores(window_tabs):
    from workbench.core.interpret.attention import AttentionSettings

    tab, _ = window_tabs["AttentionSettings"]
    assert tab.attention_settings() == AttentionSettings()
    AttentionSettings().validate()
