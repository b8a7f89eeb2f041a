"""Bring a user's architecture module in, and print the conformance kit's report card.

1. :func:`load_architectures` resolves what ``wb arch check TARGET`` names, in this order:
   a registered architecture (built-in, registered earlier, or by an entry point: ``load_plugins``);
   a path to a ``.py`` file or a package folder, imported under a module name derived from its
   resolved path (loading it again reuses that module, so its ``register_architecture`` call runs
   once per process); an installed module's dotted name (``importlib.import_module``).
2. The architectures a module brings are the registered names whose builder it defines (it
   registered them itself, or an entry point did). A module that registers nothing but defines
   ``build`` and ``DEFAULTS`` is registered under ``name`` (default: its file's stem).
3. :func:`format_card` lays out :func:`~workbench.architectures.conformance.run_checks`' results as a
   table: check, result, why; :func:`card_passed` says whether every result passes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

from workbench.architectures.conformance import CheckResult


def _import_file(path: Path) -> types.ModuleType:
    """Step 1: a file (or a package folder) imported as a module, once per resolved path."""
    path = path.resolve()
    file = path / "__init__.py" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"architecture module {path} has no {'__init__.py' if path.is_dir() else 'file'}")
    stem = path.stem if path.suffix == ".py" else path.name
    name = f"wb_arch_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file, submodule_search_locations=[str(path)] if path.is_dir() else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and relative imports look it up
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ValueError(f"could not import the architecture module {path}: {type(err).__name__}: {err}") from err
    return module


def _import_target(target: str) -> types.ModuleType:
    from workbench.architectures import architecture_names

    path = Path(target)
    if path.suffix == ".py" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"architecture module file {target!r} does not exist")
        return _import_file(path)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and not target.startswith(err.name):
            raise ValueError(f"importing {target!r} failed: {err}") from err
        raise ValueError(f"{target!r} is neither a registered architecture (choose one of: "
                         f"{', '.join(architecture_names())}), a file, nor an importable module") from None
    except Exception as err:
        raise ValueError(f"could not import the architecture module {target!r}: {type(err).__name__}: {err}") from err


def module_architectures(module: types.ModuleType) -> list[str]:
    """Step 2: the registered names whose builder ``module`` defines."""
    from workbench.architectures import ARCHITECTURES

    return sorted(n for n, build in ARCHITECTURES.items() if getattr(build, "__module__", None) == module.__name__)


def _default_name(module: types.ModuleType) -> str:
    """A module's file stem (its folder's name for a package), whatever name it was imported under."""
    file = Path(getattr(module, "__file__", None) or module.__name__.replace(".", "/"))
    return file.parent.name if file.name == "__init__.py" else file.stem


def load_architectures(target: str, name: str | None = None) -> list[str]:
    """The registered architecture names ``target`` brings (steps 1-2); ``name`` picks one."""
    from workbench.architectures import ARCHITECTURES, architecture_names, register_architecture

    if target in architecture_names():
        names = [target]
    else:
        module = _import_target(target)
        names = module_architectures(module)
        if not names and hasattr(module, "build") and hasattr(module, "DEFAULTS"):
            new = name or _default_name(module)
            register_architecture(new, module.build, module.DEFAULTS, replace=new in ARCHITECTURES
                                  and getattr(ARCHITECTURES[new], "__module__", None) == module.__name__)
            names = [new]
        if not names:
            raise ValueError(f"{target} registers no architecture: call register_architecture(name, build, DEFAULTS) "
                             "in it, or define build(config) and DEFAULTS (docs/architectures.md)")
    if name is not None:
        if name not in names:
            raise ValueError(f"{target} brings no architecture named {name!r}; choose one of: {', '.join(names)}")
        names = [name]
    return names


def card_passed(results: list[CheckResult]) -> bool:
    return all(r.passed for r in results)


def format_card(name: str, results: list[CheckResult], source: str | None = None) -> str:
    """Step 3: a plain-text table, one row per check, and a closing count."""
    width = max(len("check"), *(len(r.name) for r in results))
    status_width = max(len("result"), *(len(r.status) for r in results))
    lines = [f"conformance of {name!r}" + (f" ({source})" if source and source != name else ""),
             f"{'check':{width}s}  {'result':{status_width}s}  why"]
    lines += [f"{r.name:{width}s}  {r.status:{status_width}s}  {r.detail}" for r in results]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    verdict = "conforms" if card_passed(results) else "does NOT conform"
    lines.append(f"{name} {verdict}: " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return "\n".join(lines)


__all__ = ["card_passed", "format_card", "load_architectures", "module_architectures"]
