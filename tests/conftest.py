"""Test setup: offscreen Qt, isolated caches and settings, tiny models built once."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# Before anything imports Qt or huggingface_hub (which read these at import time).
_SANDBOX = Path(tempfile.mkdtemp(prefix="lmwb-tests-"))
os.environ["QT_QPA_PLATFORM"] = "offscreen"
os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
os.environ["LMWB_CACHE_DIR"] = str(_SANDBOX / "cache")
os.environ["LMWB_MODELS_DIR"] = str(_SANDBOX / "models")
os.environ["LMWB_DATA_DIR"] = str(_SANDBOX / "data")
os.environ["HF_HOME"] = str(_SANDBOX / "hf")
os.environ["HF_HUB_CACHE"] = str(_SANDBOX / "hf" / "hub")
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"  # hermetic: tests never reach the Hub
os.environ["XDG_CONFIG_HOME"] = str(_SANDBOX / "config")
# Other tools' model folders (local_models): never the real ones of the machine
for _tool in ("LMSTUDIO", "OLLAMA", "GPT4ALL", "LLAMACPP"):
    os.environ[f"LMWB_{_tool}_DIR"] = str(_SANDBOX / "tools" / _tool.lower())

# The suite runs in one worker process per core (pytest-xdist): one thread each for torch's
# pools, waiting passively, or the workers' OpenMP threads spin against each other for the
# same cores (a quarter of the suite's CPU time went to that on 2 cores). The commands and
# training runs the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
import tiny_models  # noqa: E402

# QtWebEngine needs these before pytest-qt creates the QApplication.
from PySide6.QtCore import QCoreApplication, Qt  # noqa: E402

from workbench.ui.common.web_view import register_scheme  # noqa: E402

register_scheme()
QCoreApplication.setAttribute(Qt.ApplicationAttribute.AA_ShareOpenGLContexts)


@pytest.fixture(scope="session", autouse=True)
def _isolated_settings():
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                      str(_SANDBOX / "settings"))
    yield


@pytest.fixture(autouse=True)
def _collect_qt_garbage():
    """After each test (and after pytest-qt has closed its widgets), delete what Qt was
    asked to delete and collect Python garbage now, in a known order, rather than at a
    random later moment in another test. What is left is frozen, as the app does after a
    full collection (workbench/ui/common/worker.py): the next test's collection looks only at newer
    objects (a worker holding torch, transformers and the Trainer has about half a million,
    and looking at them all again took 0.3–1.4 s a test)."""
    yield
    import gc

    from PySide6.QtCore import QCoreApplication, QEvent

    app = QCoreApplication.instance()
    if app is not None:
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        app.processEvents()
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True, scope="module")
def _collect_module_garbage():
    """After each module, everything is looked at again: what a module kept alive past its
    tests (its module-scoped fixtures: windows, models) is collected when it ends."""
    yield
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_data_dir(tmp_path, monkeypatch):
    """Every test starts with an empty data folder (results history)."""
    monkeypatch.setenv("LMWB_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(autouse=True)
def _fresh_settings(_isolated_settings):
    """Every test starts from empty settings (the GUI tests persist values)."""
    from PySide6.QtCore import QCoreApplication, QSettings

    QCoreApplication.setOrganizationName("LM Workbench Tests")
    QCoreApplication.setApplicationName("LM Workbench Tests")
    QSettings().clear()
    yield


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny(tiny_root):
    """``tiny(family)`` → folder of a tiny random model of that family (built once)."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = tiny_models.build_model(family, tiny_root / family)
        return built[family]

    return get


@pytest.fixture(scope="module")
def window_pool():
    """Windows kept between the cases of a module (tests/dialogs.py), closed at its end."""
    from dialogs import WindowPool

    pool = WindowPool()
    yield pool
    pool.close_all()
    if os.environ.get("LMWB_POOL_REPORT"):  # how often a window was reused, and why not
        print(f"\n{pool.new_windows} new windows, {pool.reused} reused", *pool.refused,
              sep="\n  ")
    import gc

    gc.collect()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test (``item.report_call``): a fixture's teardown can
    tell whether its test passed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def sandbox() -> Path:
    return _SANDBOX


def pytest_unconfigure(config):
    # The sandbox holds the converted bundled models (about 700 MB): never leave it behind.
    shutil.rmtree(_SANDBOX, ignore_errors=True)


# The longest tests (up to half a minute each on 2 cores: the --screenshot test with the
# real model, which also converts it once for its worker; training runs in their own
# processes; fine-tuning from the window) go first, so that the two workers share them out
# instead of one worker still running one at the end.
_LONG_FIRST = ("test_screenshot_with_the_default_model", "test_training_process.py",
               "test_finetune_tab.py", "test_cli.py::test_finetune",
               "test_bundled_models.py", "test_bad_files.py::test_perplexity_of_a_long_text")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, name in enumerate(_LONG_FIRST) if name in item.nodeid),
                    len(_LONG_FIRST))

    items.sort(key=rank)
