"""One description of every setting, for the options that were written by hand: the
training curve's smoothing (``monitor --smoothing`` and the Fine-tune tab's slider), the
paired tests' resamples (``evaluate bleu --samples``), the candidates per step
(``generate --top-n``, ``compare --top-n``) and the run's limits (``finetune --max-steps``,
``--epochs``). The core, the option (and the slider) accept and refuse the same values at
and just past each end of the range."""

from __future__ import annotations

import pytest

from tests.test_settings import FT_ARGV, assert_agree, probes
from workbench.cli import build_parser
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import described, description
from workbench.core.evaluation.metrics import SignificanceSettings, score_translation
from workbench.core.generation.records import CandidateSettings
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.monitor import CurveSettings

# each group: its command's arguments (nothing is read or loaded before the check fails)
ARGV = {
    CurveSettings: [["monitor", "no-such-run"]],
    SignificanceSettings: [["evaluate", "bleu", "--hyp", "h.txt", "--ref", "r.txt",
                            "--compare", "s.txt"]],
    CandidateSettings: [["generate", "--prompt", "x"],
                        ["compare", "--prompt", "x", "--strategy", "greedy", "--strategy",
                         "top-k 40"]],
}
NUMBERS = [(cls, argv, f, meta) for cls, argvs in ARGV.items() for argv in argvs
           for f, meta in described(cls)]


def core_accepts(cls: type, name: str, value: float) -> bool:
    try:
        cls(**{name: value}).validate()
    except WorkbenchError:
        return False
    return True


class Loading(Exception):
    """Raised where the command would load a model: its checks have passed."""


@pytest.fixture(autouse=True)
def no_loading(monkeypatch):
    def load(*_args, **_kwargs):
        raise Loading

    monkeypatch.setattr("workbench.cli.generate.load_from_args", load)


def cli_accepts(argv: list[str], name: str, value: float) -> bool:
    """The command itself, up to where it reads a file (there is none: another error) or
    loads a model (:class:`Loading`): refused only by a message that names the option."""
    from workbench.cli import COMMANDS

    option = f"--{name.replace('_', '-')}"
    args = build_parser().parse_args([*argv, f"{option}={value}"])
    command = COMMANDS[(argv[0], argv[1] if argv[0] == "evaluate" else None)]
    try:
        command(args)
    except WorkbenchError as exc:
        return not str(exc).startswith(option)
    except Loading:
        pass
    return True


@pytest.mark.parametrize("cls, argv, f, meta", NUMBERS,
                         ids=[f"{' '.join(a[:2])}.{f.name}" for _, a, f, _ in NUMBERS])
def test_the_options_and_the_core_accept_the_same_values(cls, argv, f, meta):
    assert_agree(f.name, meta, probes(f, meta), lambda v: core_accepts(cls, f.name, v),
                 lambda v: cli_accepts(argv, f.name, v))


@pytest.mark.parametrize("cls, argv, f, meta", NUMBERS,
                         ids=[f"{' '.join(a[:2])}.{f.name}" for _, a, f, _ in NUMBERS])
def test_the_options_default_is_the_cores(cls, argv, f, meta):
    args = build_parser().parse_args(argv)
    assert getattr(args, f.name) == f.default == getattr(cls(), f.name)


class SliderBox:
    """A slider seen as a spin box of the setting's values, for :func:`assert_agree`."""

    def __init__(self, slider) -> None:
        self.slider = slider

    def setValue(self, value: float) -> None:  # as a spin box names it
        self.slider.setValue(round(value * 100))  # a slider clamps what its range refuses


@pytest.fixture
def training_tab(qtbot):
    from workbench.ui.common.worker import ModelWorker
    from workbench.ui.training.tab import FinetuneTab

    worker = ModelWorker()
    tab = FinetuneTab(worker)
    qtbot.addWidget(tab)
    yield tab
    assert worker.shutdown(5000)


def test_the_smoothing_slider_offers_the_range_of_the_option(training_tab):
    from workbench.ui.common.setting_widgets import slider_value

    f, meta = next(described(CurveSettings))
    slider = training_tab.smoothing
    assert slider_value(CurveSettings, "smoothing", slider) == pytest.approx(f.default)
    assert (slider.minimum(), slider.maximum()) == (0, 99)  # the steps of 0.01 below 1
    assert_agree(f.name, meta, probes(f, meta),
                 lambda v: core_accepts(CurveSettings, f.name, v),
                 lambda v: cli_accepts(ARGV[CurveSettings][0], f.name, v), SliderBox(slider),
                 lambda box: slider_value(CurveSettings, "smoothing", box.slider))


def test_the_translation_scores_check_the_resamples_first():
    with pytest.raises(WorkbenchError, match="The number of resamples must be 0"):
        score_translation(["a"], [["a"]], compare_hyps=["a"], n_samples=-1)


def test_the_runs_limits_come_from_the_configuration():
    """``--max-steps`` and ``--epochs`` take the type, range and help of FinetuneConfig's
    descriptions; left out (None), the run's own limits on --resume, else the defaults."""
    from workbench.cli.finetune import config_from_args

    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0]
               .choices["finetune"]._actions}
    for name in ("max_steps", "epochs"):
        meta = description(FinetuneConfig, name)
        assert actions[name].default is None
        assert actions[name].type is (int if name == "max_steps" else float)
        assert meta.help in actions[name].help and f"{meta.high:,.0f}".replace(",", "") \
            in actions[name].help and "--resume" in actions[name].help
    config = config_from_args(build_parser().parse_args(FT_ARGV))
    assert (config.max_steps, config.epochs) == (-1, 3.0)
