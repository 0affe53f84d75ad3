"""Plugins: a user's own file (or module) that registers objectives, models or data sets.

`--plugin=MODULE_OR_PATH` (repeatable) imports it before the config is parsed, so its fields can
be set with `--config.<field>=`. Every plugin a run imported is recorded in its run.json;
resuming the run and `python -m vae_jax.evaluate` (and `vae_jax.load`) import them again
without being told. A plugin that cannot be imported is one `PluginError`, naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types

from vae_jax.errors import ConfigError

__all__ = ["PluginError", "import_plugin", "imported", "import_all"]

_IMPORTED: dict[str, types.ModuleType] = {}  # recorded spec -> module, in import order


class PluginError(ConfigError):
    """A plugin that cannot be found or imported."""


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec


def _recorded(spec: str) -> str:
    """How a plugin is recorded: a file by its absolute path, a module by its name."""
    return os.path.abspath(os.path.expanduser(spec)) if _is_path(spec) else spec


def _import_file(path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no file {path}")
    # A module name of its own per path: two plugin files may share a file name.
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    name = f"vae_jax_plugin_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def import_plugin(spec: str, *, why: str = "") -> types.ModuleType:
    """Imports a plugin once: a module name, or a path to a .py file.

    Args:
      spec: 'my_package.my_vae' or 'path/to/my_vae.py'.
      why: what asked for it, for the error message ('the workdir W was trained with it').

    Raises:
      PluginError: it cannot be found, or importing it raised (its own message is kept).
    """
    recorded = _recorded(spec)
    if recorded in _IMPORTED:
        return _IMPORTED[recorded]
    try:
        module = _import_file(recorded) if _is_path(spec) else importlib.import_module(spec)
    except ConfigError as error:  # a registration the plugin got wrong: its own sentence
        raise PluginError(f"plugin {spec!r}: {error}") from None
    except Exception as error:  # noqa: BLE001 - any failure of the user's code, in one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise PluginError(
            f"plugin {spec!r} could not be imported{why}: {type(error).__name__}"
            f"{': ' + reason if reason else ''}. Check the module name or the file's path."
        ) from None
    _IMPORTED[recorded] = module
    return module


def imported() -> list[str]:
    """Every plugin imported so far, as run.json records them."""
    return list(_IMPORTED)


def import_all(specs, *, why: str = "") -> None:
    """`import_plugin` of each, in order."""
    for spec in specs:
        import_plugin(spec, why=why)
