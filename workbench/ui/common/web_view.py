"""An offline, locked-down web view for bertviz pages.

Pages are served from memory through a custom ``lmwb:`` URL scheme (``setHtml`` silently
fails above 2 MB); every request for anything else is blocked; the profile is
off-the-record, so nothing is written to disk.
"""

from __future__ import annotations

import itertools

from PySide6.QtCore import QBuffer, QByteArray, QUrl, Signal
from PySide6.QtWebEngineCore import (
    QWebEnginePage,
    QWebEngineProfile,
    QWebEngineUrlRequestInfo,
    QWebEngineUrlRequestInterceptor,
    QWebEngineUrlScheme,
    QWebEngineUrlSchemeHandler,
)
from PySide6.QtWidgets import QWidget

SCHEME = b"lmwb"
_registered = False


def register_scheme() -> None:
    """Declare the scheme; must run before the QApplication is created."""
    global _registered
    if _registered:
        return
    scheme = QWebEngineUrlScheme(SCHEME)
    scheme.setSyntax(QWebEngineUrlScheme.Syntax.Host)
    scheme.setFlags(QWebEngineUrlScheme.Flag.SecureScheme | QWebEngineUrlScheme.Flag.LocalScheme)
    QWebEngineUrlScheme.registerScheme(scheme)
    _registered = True


class PageServer(QWebEngineUrlSchemeHandler):
    """Serves pages kept in memory under ``lmwb://app/<name>``."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.pages: dict[str, bytes] = {}

    def requestStarted(self, job) -> None:  # noqa: N802 (Qt API)
        data = self.pages.get(job.requestUrl().path().lstrip("/"))
        if data is None:
            job.fail(job.Error.UrlNotFound)
            return
        buffer = QBuffer(job)
        buffer.setData(QByteArray(data))
        buffer.open(QBuffer.OpenModeFlag.ReadOnly)
        job.reply(b"text/html", buffer)


class BlockEverythingElse(QWebEngineUrlRequestInterceptor):
    """Blocks every request that is not for the app's own scheme."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.blocked: list[str] = []

    def interceptRequest(self, info: QWebEngineUrlRequestInfo) -> None:  # noqa: N802
        url = info.requestUrl()
        if url.scheme().encode() not in (SCHEME, b"data", b"about"):
            self.blocked.append(url.toString())
            info.block(True)


class OfflineWebView(QWidget):
    """A QWebEngineView on an off-the-record profile that can only show our pages."""

    loaded = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        from PySide6.QtWebEngineWidgets import QWebEngineView
        from PySide6.QtWidgets import QVBoxLayout

        super().__init__(parent)
        self.profile = QWebEngineProfile(self)  # no storage name: off-the-record
        self.server = PageServer(self.profile)
        self.guard = BlockEverythingElse(self.profile)
        self.profile.installUrlSchemeHandler(SCHEME, self.server)
        self.profile.setUrlRequestInterceptor(self.guard)
        self.view = QWebEngineView(self)
        self.page = QWebEnginePage(self.profile, self.view)
        self.view.setPage(self.page)
        self.page.loadFinished.connect(self.loaded)
        self._counter = itertools.count(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)

    def show_html(self, html: str) -> None:
        name = f"page-{next(self._counter)}.html"
        self.server.pages = {name: html.encode("utf-8")}  # keep only the current page
        self.view.load(QUrl(f"{SCHEME.decode()}://app/{name}"))

    def run_js(self, script: str, callback) -> None:
        self.page.runJavaScript(script, 0, callback)

    def shutdown(self) -> None:
        """Delete the view and its page now, before their profile (Qt warns otherwise)."""
        import shiboken6

        if shiboken6.isValid(self.view):
            shiboken6.delete(self.view)
        if shiboken6.isValid(self.page):
            shiboken6.delete(self.page)
