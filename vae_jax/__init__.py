"""vae_jax: fast, functional variational autoencoders in JAX/Flax.

The public API. Train, resume and evaluate::

    import vae_jax

    config = vae_jax.get_config()           # the default run; change fields, then
    vae_jax.train_and_evaluate(config, "runs/demo")
    model = vae_jax.load("runs/demo")       # encode, decode, sample, reconstruct

Names are imported on first use, so `import vae_jax` (and the commands' `--help`) does not start
JAX.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "get_config": "vae_jax.config",
    "validate_config": "vae_jax.config",
    "member_config": "vae_jax.config",
    "train_and_evaluate": "vae_jax.train",
    "train_population": "vae_jax.population",
    "export_member": "vae_jax.population",
    "evaluate_workdir": "vae_jax.evaluate",
    "load": "vae_jax.trained",
    "register_objective": "vae_jax.registry",
    "unregister_objective": "vae_jax.registry",
    "register_model": "vae_jax.registry",
    "register_dataset": "vae_jax.registry",
    "TrainedModel": "vae_jax.trained",
    "VaeJaxError": "vae_jax.errors",
    "ConfigError": "vae_jax.errors",
    "DataError": "vae_jax.errors",
    "WorkdirError": "vae_jax.errors",
    "DivergenceError": "vae_jax.errors",
    "ProcessesError": "vae_jax.errors",
    "Preempted": "vae_jax.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vae_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
