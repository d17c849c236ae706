"""Starting the GUI: the QApplication, the main window, ``--screenshot`` and the probe."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ORGANIZATION = "LM Workbench"
APPLICATION = "LM Workbench"


def prepare_environment(offscreen: bool = False) -> None:
    """Environment Qt needs before the QApplication exists."""
    if offscreen:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Chromium (QtWebEngine) refuses to start its sandbox as root.
        os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")


def make_application():
    from PySide6.QtCore import QCoreApplication, QSettings, Qt
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        # QtWebEngine (bertviz views) needs shared GL contexts and its URL scheme declared
        # before the app exists.
        from workbench.ui.common.web_view import register_scheme

        register_scheme()
        QCoreApplication.setAttribute(Qt.ApplicationAttribute.AA_ShareOpenGLContexts)
        app = QApplication(sys.argv[:1])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    # Saved state in an INI file on every system (not the Windows registry or a macOS
    # property list): the one format whose stored objects are cut out unread before Qt
    # reads it (see state.open_settings), so a crafted value never unpickles anywhere.
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    return app


def wait_until(app, condition, timeout_s: float) -> bool:
    """Process events until ``condition()`` holds or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.02)
    return True


# The steps of the demo (named as in _shoot, which does them in its order) that each view of
# --screenshot (workbench.cli.window.SCREENSHOT_VIEWS) shows: --views does only those needed.
VIEW_NEEDS: dict[str, tuple[str, ...]] = {
    "1-generate": ("generate",),
    "1b-compare": ("compare",),
    "1c-sampler-stages": ("generate",),
    "1d-why-this-token": ("generate",),
    "2-attention": ("attention",),
    "3-finetune": ("finetune", "long-run"),  # the tab shows the attached run as well
    "3b-attached-run": ("finetune", "long-run"),
    "4-evaluate": ("finetune", "perplexity"),  # the base model against the tuned one
    "4b-multiple-choice": ("choice",),
    "4c-bleu": ("bleu",),
    "4d-classification": ("classification",),
    "4e-sampling-sweep": ("sweep",),
}


def take_screenshots(window, folder: Path, app, demo: bool = True,
                     timeout_s: float = 180, views: tuple[str, ...] | None = None
                     ) -> list[Path]:
    """Save one PNG per tab and per view inside a tab (``views``: only these, by name;
    default all); with ``demo``, after loading the model and the demo's work the views show
    (each step of the demo waits ``timeout_s`` at most: the whole stays bounded)."""

    folder.mkdir(parents=True, exist_ok=True)
    run_root = tempfile.mkdtemp(prefix="lmwb-demo-run-")
    try:
        return _shoot(window, folder, app, demo, timeout_s, Path(run_root),
                      tuple(VIEW_NEEDS) if views is None else views)
    finally:
        # A demo run slower than its wait (a busy machine) ends here: closing the window
        # would otherwise ask whether to keep it, and nobody answers an offscreen window.
        window.tab_pages[2].end_demo_run()
        # the demo run's model is half a gigabyte: never leave it behind
        shutil.rmtree(run_root, ignore_errors=True)


# a view inside a tab: (file name, tab, show it and return what to grab (None: the window),
# ready, put it back)
InnerView = tuple[str, int, Callable[[], object], Callable[[], bool], Callable[[], object]]


def _shoot(window, folder: Path, app, demo: bool, timeout_s: float, run_root: Path,
           views: tuple[str, ...]) -> list[Path]:
    needs = {step for name in views for step in VIEW_NEEDS[name]}
    extra: list[InnerView] = []
    if demo:
        wait_until(app, lambda: window.loading, 5)  # the autoload is queued after show
        wait_until(app, lambda: not window.loading, timeout_s)
        generate = window.tab_pages[0]
        if window.loaded is not None and generate.compatible(window.loaded):
            extra += _generate_demo(window, app, needs, timeout_s)
            _attention_demo(window, app, needs, timeout_s)
            _finetune_demo(window, app, needs, timeout_s, run_root)
            extra += _evaluate_demo(window, app, needs, timeout_s, run_root)
    return _grab_views(window, folder, app, views, extra, timeout_s)


def _generate_demo(window, app, needs: set[str], timeout_s: float) -> list[InnerView]:
    """A generation (the candidates of its most uncertain step selected) and a comparison
    of six strategies; the Generate tab's views inside it."""
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.interpret.attribution_result import METHODS

    extra: list[InnerView] = []
    generate = window.tab_pages[0]
    if "generate" in needs:
        generate.set_settings(SamplingSettings(max_new_tokens=48, seed=1))
        generate.start()
        wait_until(app, lambda: not generate.running(), timeout_s)
        steps = generate.current_steps()
        if len(steps) > 2:  # show the candidates of an interesting (uncertain) step
            generate.select_step(max(range(len(steps)),
                                     key=lambda i: steps[i].entropy))
    if needs & {"generate", "compare"}:  # the tab's picture shows these settings
        generate.set_settings(SamplingSettings(max_new_tokens=24, seed=1))
    if "compare" in needs:  # six strategies side by side, sampled ones in one batch
        generate.compare.strategies.setPlainText(
            "greedy\ntop-k 40\nnucleus 0.9\nmin-p 0.1\ntemperature=1.3,top_p=0.95\n"
            "temperature=0.8,dry_multiplier=0.8")
        generate.start_compare()
        wait_until(app, lambda: not generate.running(), timeout_s)
        generate.modes.setCurrentIndex(0)  # the tab's own picture: the single run
    extra.append(("1b-compare", 0, lambda: generate.modes.setCurrentIndex(1),
                  lambda: True, lambda: generate.modes.setCurrentIndex(0)))
    single = generate.single
    if single.selected_step is not None:
        extra.append(("1c-sampler-stages", 0,
                      lambda: single.stages_button.setChecked(True),
                      lambda: not single.stage_slot.running,
                      lambda: single.stages_button.setChecked(False)))

        def why():  # input × gradient: one backward pass (the demo stays short)
            single.why_this_token()
            view = single.attribution.view
            view.method.setCurrentIndex(list(METHODS).index("ixg"))
            view.run()
            return single.attribution

        extra.append(("1d-why-this-token", 0, why,
                      lambda: not single.attribution.view.run_slot.running,
                      lambda: single.attribution.close()))
    return extra


def _attention_demo(window, app, needs: set[str], timeout_s: float) -> None:
    """The attention of the default text, its bertviz page drawn."""
    attention = window.tab_pages[1]
    if "attention" in needs:
        attention.start()
        wait_until(app, lambda: not attention.view_slot.running, timeout_s)
        if attention.web is not None:
            loaded: list[bool] = []
            attention.web.loaded.connect(loaded.append)
            wait_until(app, lambda: bool(loaded), 60)
            wait_until(app, lambda: False, 1.5)  # let the page draw its SVG


def _finetune_demo(window, app, needs: set[str], timeout_s: float, run_root: Path) -> None:
    """A short causal-LM run on the bundled corpus."""
    finetune = window.tab_pages[2]
    if "finetune" in needs:
        finetune.task.setCurrentIndex(1)
        finetune.max_steps.setValue(12)
        _demo_run_settings(finetune)
        finetune.learning_rate.setValue(1e-4)
        finetune.batch_size.setValue(4)
        finetune.max_length.setValue(64)
        finetune.output_dir.setText(str(run_root / "demo-run"))
        finetune.start()
        wait_until(app, lambda: not finetune.running, timeout_s)


def _evaluate_demo(window, app, needs: set[str], timeout_s: float, run_root: Path
                   ) -> list[InnerView]:
    """Perplexity of the base model against the fine-tuned one, BLEU, a long attached run,
    multiple choice and a sampling sweep; the Evaluate tab's views inside it (and the
    Fine-tune tab's attached run)."""
    from workbench.core.common.paths import sample_data
    from workbench.core.training.runs import write_synthetic_run

    extra: list[InnerView] = []
    finetune = window.tab_pages[2]
    evaluate = window.tab_pages[3]  # the base model against the fine-tuned one
    if "perplexity" in needs:
        evaluate.compare_model.setCurrentText(finetune.final_model or "")
        evaluate.start_perplexity()
        wait_until(app, lambda: not evaluate.ppl_slot.running, timeout_s)
        if evaluate.colour_by.count() == 3:  # where fine-tuning changed the surprisal
            evaluate.colour_by.setCurrentIndex(2)
            evaluate.colour_by.activated.emit(2)
    if "bleu" in needs:
        # BLEU, chrF and TER of a hypothesis against its reference (the shipped
        # corpus, and the same lines with words dropped and swapped)
        reference = [line for line in sample_data("corpus.txt").read_text(
            encoding="utf-8").splitlines() if line.strip()][:40]
        hypothesis = [" ".join(w for i, w in enumerate(line.split()) if i % 5 != 3)
                      for line in reference]
        (run_root / "ref.txt").write_text("\n".join(reference) + "\n",
                                          encoding="utf-8")
        (run_root / "hyp.txt").write_text("\n".join(hypothesis) + "\n",
                                          encoding="utf-8")
        evaluate.hyp_file.setText(str(run_root / "hyp.txt"))
        evaluate.ref_files.setText(str(run_root / "ref.txt"))
        for box in evaluate.metric_boxes.values():
            box.setChecked(True)
        evaluate.start_bleu()
        wait_until(app, lambda: not evaluate.bleu_slot.running, timeout_s)
    bleu_page = evaluate.modes.widget(1)
    extra.append(("4c-bleu", 3, lambda: evaluate.modes.setCurrentWidget(bleu_page),
                  lambda: True, lambda: evaluate.modes.setCurrentIndex(0)))
    if "long-run" in needs:  # a long run followed beside the demo run: 100,000 steps
        long_run = run_root / "long-run"
        write_synthetic_run(long_run, 100_000)
        finetune.attach(str(long_run), remember=False)

    def long_run_drawn() -> bool:
        curves = finetune.runs.get("long-run (attached)")
        return curves is not None and len(curves.drawn) >= 4
    extra.append(("3b-attached-run", 2, lambda: None, long_run_drawn, lambda: None))
    choice = evaluate.choice_page  # the shipped common-sense items
    if "choice" in needs:
        choice.start()
        wait_until(app, lambda: not choice.run_slot.running, timeout_s)
    extra.append(("4b-multiple-choice", 3,
                  lambda: evaluate.modes.setCurrentWidget(choice), lambda: True,
                  lambda: evaluate.modes.setCurrentIndex(0)))
    sweep = evaluate.sweep_page  # temperature × top-p, 4 samples a cell
    if "sweep" in needs:
        sweep.x_axis.setting.setCurrentText("temperature")
        sweep.x_axis.values.setText("0.5:1.5:3")
        sweep.y_axis.setting.setCurrentText("top_p")
        sweep.y_axis.values.setText("0.5,0.9,1.0")
        sweep.samples.setValue(4)
        sweep.max_new.setValue(24)
        sweep.start()
        wait_until(app, lambda: not sweep.run_slot.running, timeout_s)
        if sweep.result is not None:
            sweep.select_cell(1, 1)  # the middle cell's samples
    extra.append(("4e-sampling-sweep", 3,
                  lambda: evaluate.modes.setCurrentWidget(sweep), lambda: True,
                  lambda: evaluate.modes.setCurrentIndex(0)))
    # last: it changes the window's model (and runs only when its view is taken)
    extra.append(("4d-classification", 3,
                  lambda: _classification_demo(window, app, run_root, timeout_s),
                  lambda: not evaluate.classify_page.run_slot.running,
                  lambda: evaluate.modes.setCurrentIndex(0)))
    return extra


def _grab_views(window, folder: Path, app, views: tuple[str, ...], extra: list[InnerView],
                timeout_s: float) -> list[Path]:
    """Save the tabs named in ``views``, then the views inside tabs."""
    saved = []
    for index, page in enumerate(window.tab_pages):
        name = f"{index + 1}-{page.title.lower().replace('-', '')}"
        if name not in views:
            continue
        window.tabs.setCurrentIndex(index)
        # let layouts settle and paint; a web view shown again needs longer for its frame
        wait_until(app, lambda: False, 1.5 if getattr(page, "web", None) is not None else 0.2)
        saved.append(_grab(window, folder / f"{name}.png"))
    for name, index, show, ready, back in extra:  # views inside a tab, after the tabs
        if name not in views:
            continue
        window.tabs.setCurrentIndex(index)
        target = show() or window
        wait_until(app, ready, timeout_s)
        wait_until(app, lambda: False, 0.3)
        saved.append(_grab(target, folder / f"{name}.png"))
        back()
    return saved


def _demo_run_settings(finetune) -> None:
    """Logging, evaluation, checkpoints and probes of a short demo run, kept out of the
    user's remembered runs (its folder is removed afterwards)."""
    finetune.logging_steps.setValue(1)
    finetune.eval_steps.setValue(4)
    finetune.save_steps.setValue(12)
    finetune.probe_every.setValue(6)
    finetune.remember_runs = False


TOPICS = {  # four labels for the classification demo: sentences written for it
    "weather": ["rain fell all night on the roofs", "the wind turned cold by evening",
                "a storm is coming from the west", "snow covered the hills this morning",
                "the sun came out after the fog", "thunder rolled over the valley"],
    "food": ["she baked bread with fresh butter", "the soup needs more salt and pepper",
             "we ate apples from the orchard", "he grilled fish for dinner",
             "the cake was sweet and warm", "rice and beans filled the pot"],
    "sea": ["the boat left the harbour at dawn", "waves broke against the pier",
            "the tide came in over the sand", "a ship sailed past the lighthouse",
            "fishermen mended their nets", "the keeper watched the open water"],
    "work": ["the meeting ran late again", "she filed the report before noon",
             "the office printer jammed twice", "he answered emails all afternoon",
             "the team planned the next project", "payday comes at the end of the month"],
}


def _classification_demo(window, app, run_root: Path, timeout_s: float):
    """A 4-label classifier for the Classification page: MiniLM fine-tuned for a few steps
    on sentences of four topics, then scored on them (after the tabs' pictures: it changes
    the window's model)."""
    rows = [(text, label) for label, texts in TOPICS.items() for text in texts]
    data = run_root / "topics.csv"
    data.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows),
                    encoding="utf-8")
    window.load_model("all-MiniLM-L6-v2")
    wait_until(app, lambda: window.loading, 5)
    wait_until(app, lambda: not window.loading, timeout_s)
    finetune = window.tab_pages[2]
    finetune.task.setCurrentIndex(0)
    _demo_run_settings(finetune)  # as the causal-LM demo run leaves them, when it ran
    finetune.train_file.setText(str(data))
    finetune.validation_file.setText(str(data))
    finetune.max_steps.setValue(30)
    finetune.batch_size.setValue(8)
    finetune.learning_rate.setValue(1e-3)
    finetune.max_length.setValue(32)
    finetune.output_dir.setText(str(run_root / "topics-run"))
    finetune.start()
    wait_until(app, lambda: not finetune.running, timeout_s)
    if finetune.final_model:
        window.use_trained_model(finetune.final_model)
        wait_until(app, lambda: window.loading, 5)
        wait_until(app, lambda: not window.loading, timeout_s)
    evaluate = window.tab_pages[3]
    window.tabs.setCurrentWidget(evaluate)
    page = evaluate.classify_page
    evaluate.modes.setCurrentWidget(page)
    page.data_file.setText(str(data))
    page.start()
    return None


def _grab(window, path: Path) -> Path:
    if not window.grab().save(str(path)):
        raise OSError(f"could not write {path}")
    return path


def use_fresh_state() -> Path:
    """Point this process's saved state (settings, results history, remembered runs) at a
    new empty folder, returned: screenshots show the app as a new user first sees it, with
    the default model, whatever this user saved (model caches stay shared)."""
    from PySide6.QtCore import QSettings

    folder = Path(tempfile.mkdtemp(prefix="lmwb-fresh-state-"))
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(folder / "settings"))
    os.environ["LMWB_DATA_DIR"] = str(folder / "data")
    return folder


def run_gui(args: argparse.Namespace) -> int:
    prepare_environment(offscreen=bool(args.screenshot or args.startup_probe))
    app = make_application()
    fresh = use_fresh_state() if args.screenshot else None
    try:
        return _run_window(app, args)
    finally:
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)


def _run_window(app, args: argparse.Namespace) -> int:
    from PySide6.QtCore import QTimer

    from workbench.ui.shell.main_window import MainWindow

    window = MainWindow(initial_model=args.model, device=args.device,
                        autoload=not (args.no_autoload or args.startup_probe),
                        theme_choice=args.theme)
    size = getattr(args, "window_size", None)
    if args.screenshot:
        window.persist = False  # a demo run must not change the user's settings
        window.resize(*(size or (1280, 820)))
    elif size:
        window.resize(*size)
    window.show()
    exit_code = [0]
    if args.startup_probe:
        QTimer.singleShot(0, lambda: (print("window-shown", flush=True), app.quit()))
    elif args.screenshot:
        def shoot() -> None:
            try:
                for path in take_screenshots(window, Path(args.screenshot), app,
                                             demo=not args.no_autoload,
                                             views=args.views):
                    print(path)
            except Exception as exc:  # one line, non-zero exit
                print(f"error: screenshots failed: {exc}", file=sys.stderr)
                exit_code[0] = 1
            window.close()
            app.quit()

        QTimer.singleShot(0, shoot)
    rc = app.exec()
    if not window.worker.shutdown(5000):
        # A job that cannot be interrupted (a first GGUF conversion) is still running:
        # leave without waiting for it rather than hang; its output is never marked done.
        os._exit(rc or exit_code[0])
    return rc or exit_code[0]
