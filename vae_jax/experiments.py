"""The experiment configs that come with vae_jax, by name: `--config=burda_vae` trains
experiments/burda_vae.py, and `from vae_jax.experiments.burda_vae import get_config` starts a
config of your own from one.

The configs live in the checkout's top-level experiments/ directory (the project's layout keeps
them there, beside the package); a wheel installs that directory as vae_jax/experiments/
(pyproject.toml's package-dir). This module is the package of whichever of the two exists: a
module with a `__path__` is a package to Python's import system, so the configs import the same
way from a checkout, an editable install and a wheel. Nothing here imports JAX.
"""

from __future__ import annotations

import os

__all__ = ["directory", "names", "path"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CANDIDATES = (
    os.path.join(_PACKAGE, "experiments"),  # a wheel: vae_jax/experiments/
    os.path.join(os.path.dirname(_PACKAGE), "experiments"),  # a checkout: experiments/
)
__path__ = [candidate for candidate in _CANDIDATES if os.path.isdir(candidate)][:1]


def directory() -> str | None:
    """Where the configs are, or None when this installation has none."""
    return __path__[0] if __path__ else None


def names() -> tuple[str, ...]:
    """The configs' names (their file names without `.py`), sorted."""
    found = directory()
    if found is None:
        return ()
    return tuple(
        sorted(
            entry[: -len(".py")]
            for entry in os.listdir(found)
            if entry.endswith(".py") and entry[:1].isalpha()
        )
    )


def path(name: str) -> str | None:
    """The file of the config called `name`, or None when there is none of that name."""
    return os.path.join(directory(), f"{name}.py") if name in names() else None
