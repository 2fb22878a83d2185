"""MkDocs hook: reference/configuration.md, rendered from serve_app/config.py on every build by
scripts/config_reference.py, so the page is never stale. It exists only in the build: a copy in
docs/ would be a stale one, and stops the build."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

PAGE = "reference/configuration.md"


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _generator(config):
    path = _root(config) / "scripts" / "config_reference.py"
    spec = importlib.util.spec_from_file_location("config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files, config):
    if files.get_file_from_path(PAGE) is not None:
        raise PluginError(f"docs/{PAGE} is generated from serve_app/config.py at build time: delete the copy")
    files.append(File.generated(config, PAGE, content=_generator(config).render()))
    return files


def on_serve(server, config, builder):
    root = _root(config)
    server.watch(str(root / "serve_app" / "config.py"))
    server.watch(str(root / "scripts" / "config_reference.py"))
    return server
