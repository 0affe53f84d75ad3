"""Objectives by name: the built-ins are registered here exactly as a user's own would be.

A registration says how to build the objective and what it adds to and reads from the config;
the config's allowed names, the fields only some objectives read (for resume checks and for
refusing settings the run would ignore), the weights a population may sweep and whether the run
reports an ELBO all derive from the registrations. Nothing here imports JAX: `build` may be a
callable or a 'module:function' string imported on first use, so the command line answers
`--help` and flag errors at once.

`build(config, model)` returns `loss_fn(params, x, key, step) -> (loss, metrics)` or an
`objectives.Objective` (one with a critic, as FactorVAE's). The config it gets is read-only and
may carry traced values of the `sweepable` fields (a population's members).
"""

from __future__ import annotations

import dataclasses
import importlib
import keyword
from collections.abc import Callable, Mapping
from typing import Any

from vae_jax.errors import ConfigError

__all__ = [
    "ConfigView",
    "ObjectiveSpec",
    "register_objective",
    "unregister_objective",
    "objective_spec",
    "objective_names",
    "objective_specs",
    "BUILTIN_OBJECTIVES",
    "NamedSpec",
    "register_model",
    "model_spec",
    "model_names",
    "model_specs",
    "register_dataset",
    "dataset_spec",
    "dataset_names",
    "unregister",
]


def _resolve(build: Callable | str) -> Callable:
    """A callable as it is; 'module:function' imported."""
    if callable(build):
        return build
    module, _, function = build.partition(":")
    return getattr(importlib.import_module(module), function)


class ConfigView(Mapping):
    """A read-only config with some fields replaced, possibly by traced values: what an
    objective's `build` reads, so that one compiled program serves any values of a sweep."""

    def __init__(self, config, overrides: Mapping[str, Any] | None = None):
        self._config, self._overrides = config, dict(overrides or {})

    def __getitem__(self, field: str):
        return self._overrides[field] if field in self._overrides else self._config[field]

    def __getattr__(self, field: str):
        if field.startswith("_"):
            raise AttributeError(field)
        try:
            return self[field]
        except KeyError:
            raise AttributeError(f"the config has no field {field!r}") from None

    def __iter__(self):
        return iter(self._config)

    def __len__(self) -> int:
        return len(self._config)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """One registered objective.

    Attributes:
      name: its `config.objective` value.
      build: `(config, model) -> loss_fn or Objective`, or a 'module:function' string for it.
      fields: config fields it adds to the schema, with their defaults (a plugin's own).
      reads: every config field that only this objective (and others that list it) reads: a
        value set while another objective runs is refused, and resuming ignores their changes.
      variational: whether it has a posterior and a KL: an ELBO to report and warm up.
      validate: `config -> None`, raising ConfigError; called when this objective runs.
      sweepable: fields a population may vary per member, traced; the first is the weight that
        `population_weights` sets.
    """

    name: str
    build: Callable | str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    reads: tuple[str, ...] = ()
    variational: bool = True
    validate: Callable | None = None
    sweepable: tuple[str, ...] = ()

    def builder(self) -> Callable:
        """The build function, imported on first use when registered by name."""
        return _resolve(self.build)


def _checked_new(kind: str, table: dict, name: str, fields) -> dict:
    """A new registration's name (an identifier, not taken) and its new fields (not in the
    schema yet), for every kind of registry."""
    if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
        raise ConfigError(f"{kind} name {name!r} must be an identifier, such as 'my_{kind}'.")
    if name in table:
        raise ConfigError(f"{kind} {name!r} is registered already; choose another name.")
    fields = dict(fields or {})
    if fields:
        taken = sorted(set(fields) & _schema_fields())
        if taken:
            raise ConfigError(
                f"{kind} {name!r} would add config fields that exist already: "
                f"{', '.join(taken)}; give its own settings new names."
            )
    return fields


def _schema_fields() -> set[str]:
    """Every config field so far. While this module itself loads (the bundled variants
    register), the schema cannot be imported yet: then the other registrations' fields only;
    `config.get_config` refuses a clash with its own fields in any case."""
    if "BUILTIN_OBJECTIVES" not in globals():
        return {f for spec in (*_OBJECTIVES.values(), *_MODELS.values()) for f in spec.fields}
    from vae_jax import config as config_lib  # the schema; imported when a plugin registers

    return set(config_lib.get_config())


_OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(
    name: str,
    build: Callable | str,
    *,
    fields: Mapping[str, Any] | None = None,
    variational: bool = True,
    validate: Callable | None = None,
    sweepable: tuple[str, ...] = (),
    reads: tuple[str, ...] = (),
) -> ObjectiveSpec:
    """Makes `config.objective=name` train the objective `build` makes.

    Args:
      name: a new objective name (an identifier).
      build: see the module docstring.
      fields: new config fields (names not in the schema yet) and their defaults; they are
        settable with `--config.<field>=` and are read only by this objective.
      variational: whether the objective reports `elbo`, `recon` and `kl`.
      validate: checks of the config for this objective; raise ConfigError.
      sweepable: fields a population may give each member its own (traced) value of.
      reads: existing fields that only this objective reads (besides `fields`).

    Returns:
      The registration.

    Raises:
      ConfigError: a name already registered or not an identifier, or a field that exists
        already.
    """
    fields = _checked_new("objective", _OBJECTIVES, name, fields)
    spec = ObjectiveSpec(
        name=name,
        build=build,
        fields=fields,
        reads=tuple(dict.fromkeys((*reads, *fields))),
        variational=bool(variational),
        validate=validate,
        sweepable=tuple(sweepable),
    )
    _OBJECTIVES[name] = spec
    return spec


def unregister_objective(name: str) -> None:
    """Removes a registration that is not a built-in (a notebook cell run again, a test)."""
    if name in BUILTIN_OBJECTIVES:
        raise ConfigError(f"objective {name!r} is built in; it cannot be unregistered.")
    _OBJECTIVES.pop(name, None)


def objective_spec(name: str) -> ObjectiveSpec:
    """The registration of `name`; ConfigError naming the registered ones otherwise."""
    if name not in _OBJECTIVES:
        raise ConfigError(
            f"objective={name!r} is not known; allowed: "
            f"{', '.join(repr(n) for n in _OBJECTIVES)} (or register your own with "
            "vae_jax.register_objective)."
        )
    return _OBJECTIVES[name]


def objective_specs() -> tuple[ObjectiveSpec, ...]:
    """Every registration, built-ins first."""
    return tuple(_OBJECTIVES.values())


def objective_names() -> tuple[str, ...]:
    """Every registered objective, built-ins first, in registration order."""
    return tuple(_OBJECTIVES)


@dataclasses.dataclass(frozen=True)
class NamedSpec:
    """A registered model (`build(config, image_shape) -> models.VAE`) or data set
    (`build(config) -> data.Dataset`), with the config fields it adds and their defaults."""

    name: str
    build: Callable | str
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def builder(self) -> Callable:
        """The build (or load) function, imported on first use when registered by name."""
        return _resolve(self.build)


_MODELS: dict[str, NamedSpec] = {}
_DATASETS: dict[str, NamedSpec] = {}


def _register(table: dict, kind: str, name: str, build, fields) -> NamedSpec:
    table[name] = NamedSpec(name=name, build=build, fields=_checked_new(kind, table, name, fields))
    return table[name]


def _lookup(table: dict, kind: str, name: str, register: str) -> NamedSpec:
    if name not in table:
        raise ConfigError(
            f"{kind}={name!r} is not known; allowed: {', '.join(repr(n) for n in table)} (or "
            f"register your own with vae_jax.{register})."
        )
    return table[name]


def register_model(name: str, build: Callable | str, *, fields=None) -> NamedSpec:
    """Makes `config.model=name` train `build(config, image_shape)`: a `models.VAE` of your own
    Linen encoder and decoder (the contract is in `models.VAE`'s docstring). `fields` are new
    config fields with their defaults."""
    return _register(_MODELS, "model", name, build, fields)


def model_spec(name: str) -> NamedSpec:
    return _lookup(_MODELS, "model", name, "register_model")


def model_names() -> tuple[str, ...]:
    return tuple(_MODELS)


def model_specs() -> tuple[NamedSpec, ...]:
    return tuple(_MODELS.values())


def register_dataset(name: str, load: Callable | str) -> NamedSpec:
    """Makes `config.dataset=name` train on `load(config)`: a `vae_jax.data.Dataset` (build one
    from arrays in memory with `vae_jax.data.from_arrays`)."""
    return _register(_DATASETS, "dataset", name, load, None)


def dataset_spec(name: str) -> NamedSpec | None:
    """The registration of a data set name, or None (then it is one of `data`'s own sources)."""
    return _DATASETS.get(name)


def dataset_names() -> tuple[str, ...]:
    return tuple(_DATASETS)


def unregister(name: str) -> None:
    """Removes a registered model or data set that is not built in (notebooks, tests)."""
    if name in ("mlp", "conv"):
        raise ConfigError(f"model {name!r} is built in; it cannot be unregistered.")
    _MODELS.pop(name, None)
    _DATASETS.pop(name, None)


def _needs_unit_beta(config) -> None:
    if config.beta != 1.0:
        raise ConfigError(
            f"beta={config.beta!r} with objective='vae', whose KL weight is 1; "
            "use objective='beta_vae' for another weight."
        )


def _needs_pairs(config) -> None:
    """Total-correlation estimates compare the examples of a batch."""
    if config.batch_size < 2:
        raise ConfigError(
            f"batch_size={config.batch_size} with objective={config.objective!r}, whose total-"
            "correlation estimate compares the examples of a batch; allowed: >= 2."
        )


_BUILTINS = "vae_jax.objectives:"
register_objective("vae", _BUILTINS + "build_elbo", validate=_needs_unit_beta)
register_objective("beta_vae", _BUILTINS + "build_elbo", sweepable=("beta",))
register_objective(
    "annealed_vae",
    _BUILTINS + "build_annealed",
    reads=("capacity_gamma", "capacity_max", "capacity_steps"),
    sweepable=("capacity_gamma", "capacity_max"),
)
register_objective(
    "beta_tcvae", _BUILTINS + "build_beta_tcvae", validate=_needs_pairs, sweepable=("beta",)
)
register_objective(
    "factor_vae",
    _BUILTINS + "build_factor_vae",
    reads=("factor_gamma", "discriminator_hidden", "discriminator_learning_rate"),
    validate=_needs_pairs,
    sweepable=("factor_gamma",),
)
register_objective("iwae", _BUILTINS + "build_iwae", reads=("iwae_samples",))
register_objective("ae", _BUILTINS + "build_autoencoder", variational=False)
register_objective(
    "dae",
    _BUILTINS + "build_denoising_autoencoder",
    reads=("dae_corruption", "dae_noise_level"),
    variational=False,
    sweepable=("dae_noise_level",),
)
# DIP-VAE-I/II and InfoVAE register through the public API, as a user's plugin would.
from vae_jax import variants  # noqa: E402,F401

BUILTIN_OBJECTIVES = objective_names()
register_model("mlp", "vae_jax.models:build_mlp")
register_model("conv", "vae_jax.models:build_conv")
