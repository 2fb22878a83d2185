"""The configuration reference (docs/reference/configuration.md), generated from serve_app/config.py.

Each settings class there is a pydantic model; a field is documented by the docstring under it (an
attribute docstring, read here from the source with `ast`) or by its `description`. The page has a
table per class: field, type, default, description. The MkDocs hook docs/hooks/config_reference.py
renders it on every build, so the page cannot fall behind the code; no copy is kept in docs/.

    python scripts/config_reference.py               # the page, on stdout
    python scripts/config_reference.py --out FILE    # the page, into FILE
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "serve_app" / "config.py"
MODULE = "serve_app.config"

INTRO = """\
# Configuration reference

Generated from the settings classes in `serve_app/config.py` on every docs build: the field
docstrings there are the descriptions here. Every class refuses unknown keys, so a typo fails at start.

- `<repository>/<model>/config.yaml` is a [ModelConfig](#modelconfig);
  `serve-app repository check` validates a repository.
- The `args` of an application in `configs/*.yaml` are [GraphArgs](#graphargs)
  (`graphs.single_model`) or [ExperimentGraphArgs](#experimentgraphargs) (`graphs.champion_challenger`).
- A batch config such as `configs/batch/fraud.yaml` is a [BatchSettings](#batchsettings).
"""


def load_module() -> ModuleType:
    """serve_app.config from this checkout, read again if it was imported before (mkdocs serve)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if MODULE in sys.modules:
        return importlib.reload(sys.modules[MODULE])
    return importlib.import_module(MODULE)


def _docstring_after(body: list[ast.stmt], index: int) -> str | None:
    following = body[index + 1] if index + 1 < len(body) else None
    if isinstance(following, ast.Expr) and isinstance(getattr(following.value, "value", None), str):
        return inspect.cleandoc(following.value.value)
    return None


def _assigned_name(node: ast.stmt) -> str | None:
    """The name of `NAME = ...`, else None."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def field_sources(tree: ast.Module) -> dict[str, dict[str, tuple[ast.expr, str | None]]]:
    """Per class in the module: its own annotated fields, in order, with their annotation and docstring."""
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            fields = {}
            for index, statement in enumerate(node.body):
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    fields[statement.target.id] = (statement.annotation, _docstring_after(node.body, index))
            classes[node.name] = fields
    return classes


def documented_constants(tree: ast.Module) -> list[tuple[str, str]]:
    """Module-level UPPER_CASE constants with a docstring under them."""
    constants = []
    for index, node in enumerate(tree.body):
        name = _assigned_name(node)
        doc = _docstring_after(tree.body, index)
        if name and name.isupper() and doc:
            constants.append((name, doc))
    return constants


def type_aliases(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level aliases such as `Datatype = Literal[...]`, shown expanded."""
    aliases = {}
    for node in tree.body:
        name = _assigned_name(node)
        if name and isinstance(node.value, ast.Subscript) and ast.unparse(node.value.value) == "Literal":
            aliases[name] = node.value
    return aliases


def anchor(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def text(value: str) -> str:
    """A docstring as one table cell: lines joined, Markdown's specials outside code spans escaped."""
    value = " ".join(value.split())
    parts = value.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|").replace("*", "\\*")
    return "`".join(parts)


class TypeFormatter:
    def __init__(self, classes: set[str], aliases: dict[str, ast.expr]):
        self.classes = classes
        self.aliases = aliases

    def __call__(self, node: ast.expr) -> str:
        if isinstance(node, ast.Name):
            if node.id in self.classes:
                return anchor(node.id)
            if node.id in self.aliases:
                return self(self.aliases[node.id])
            return f"`{node.id}`"
        if isinstance(node, ast.Constant):
            return f"`{json.dumps(node.value)}`"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return f"{self(node.left)} or {self(node.right)}"
        if isinstance(node, ast.Subscript):
            outer = ast.unparse(node.value)
            args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
            if outer == "Literal":
                return "one of " + ", ".join(self(a) for a in args)
            if outer == "Annotated":
                return self(args[0])
            if outer == "list":
                return f"list of {self(args[0])}"
            if outer == "dict":
                return f"map of {self(args[0])} to {self(args[1])}"
        return f"`{ast.unparse(node)}`"


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def constraints(field: Any) -> list[str]:
    """What pydantic checks beyond the type: bounds, lengths, patterns."""
    said = []
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    for item in field.metadata:
        for key, symbol in symbols.items():
            if getattr(item, key, None) is not None:
                said.append(f"{symbol} {getattr(item, key)}")
        if getattr(item, "min_length", None) is not None:
            said.append(f"at least {_items(item.min_length)}")
        if getattr(item, "max_length", None) is not None:
            said.append(f"at most {_items(item.max_length)}")
        if getattr(item, "pattern", None) is not None:
            said.append(f"matches `{item.pattern}`")
    return said


def default(field: Any, base_model: type) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, base_model):
        changed = value.model_dump(mode="json", exclude_defaults=True)
        if not changed:
            return f"the defaults of {anchor(type(value).__name__)}"
        return f"`{json.dumps(changed)}`"
    shown = f"`{json.dumps(value)}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20 and value % 2**20 == 0:
        shown += f" ({value // 2**20} MiB)"
    return shown


def render() -> str:
    """The Markdown page."""
    module = load_module()
    from pydantic import BaseModel

    tree = ast.parse(SOURCE.read_text())
    sources = field_sources(tree)
    models = [
        cls
        for name, cls in vars(module).items()
        if inspect.isclass(cls) and issubclass(cls, BaseModel) and cls.__module__ == module.__name__
    ]
    models.sort(key=lambda cls: list(sources).index(cls.__name__))
    models = [cls for cls in models if cls.model_fields]
    formatter = TypeFormatter({cls.__name__ for cls in models}, type_aliases(tree))

    lines = [INTRO]
    for cls in models:
        own = sources[cls.__name__]
        documented = {f for c in cls.__mro__ if c.__name__ in sources for f in sources[c.__name__]}
        if missing := set(cls.model_fields) - documented:
            raise RuntimeError(f"{SOURCE}: {cls.__name__}: fields {sorted(missing)} not found in the source")
        lines.append(f"## {cls.__name__}\n")
        if cls.__doc__ and cls.__doc__ is not BaseModel.__doc__:
            lines.append(text(inspect.cleandoc(cls.__doc__)) + "\n")
        bases = [b.__name__ for b in cls.__bases__ if b in models]
        if bases:
            lines.append("Also takes every field of " + ", ".join(anchor(b) for b in bases) + ".\n")
        lines.append("| field | type | default | description |")
        lines.append("|---|---|---|---|")
        for name, (annotation, doc) in own.items():
            field = cls.model_fields[name]
            kind = formatter(annotation)
            if checks := constraints(field):
                kind += "; " + ", ".join(checks)
            description = text(field.description or doc or "")
            lines.append(f"| `{name}` | {kind} | {default(field, BaseModel)} | {description} |")
        lines.append("")

    for name, doc in documented_constants(tree):
        value = getattr(module, name)
        lines.append(f"## {name}\n")
        lines.append(text(doc) + "\n")
        if isinstance(value, dict):
            lines.append("```sh\n" + " ".join(f"{k}={v}" for k, v in value.items()) + "\n```\n")
        else:
            lines.append(f"`{value!r}`\n")
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the page here instead of to stdout")
    args = parser.parse_args()
    page = render()
    if args.out is None:
        sys.stdout.write(page)
    else:
        args.out.write_text(page)


if __name__ == "__main__":
    main()
