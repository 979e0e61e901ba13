"""Serve Plotly's browser bundle from the installed `plotly` package, as
`static/vendor/plotly.min.js`: hospital networks are closed, so never from a CDN, and the
bundle always matches the pinned package."""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

PREFIX = "vendor"
NAME = "plotly.min.js"
PATH = f"{PREFIX}/{NAME}"


def bundle_dir() -> Path | None:
    try:
        import plotly
    except ImportError:  # pragma: no cover - a pinned dependency
        return None
    folder = Path(plotly.__file__).parent / "package_data"
    return folder if (folder / NAME).is_file() else None


class PlotlyFinder(BaseFinder):
    def check(self, **kwargs):
        if bundle_dir() is None:
            return [Error(f"the plotly package has no {NAME}", id="training.E001")]
        return []

    def find(self, path, find_all=False, **kwargs):
        find_all = self._check_deprecated_find_param(find_all=find_all, **kwargs) \
            if kwargs else find_all
        folder = bundle_dir()
        match = str(folder / NAME) if folder is not None and path == PATH else None
        if find_all:
            return [match] if match else []
        return match

    def list(self, ignore_patterns):
        folder = bundle_dir()
        if folder is not None:
            storage = FileSystemStorage(location=str(folder))
            storage.prefix = PREFIX
            yield NAME, storage
