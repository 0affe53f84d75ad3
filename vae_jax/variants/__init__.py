"""β-VAE variants registered through the public registry exactly as a user's plugin would be:
DIP-VAE-I, DIP-VAE-II (`dip_vae`) and InfoVAE-MMD (`info_vae`). With the built-ins the project
covers all six of disentanglement_lib's methods.

This file only registers (no JAX is imported until a run builds the objective, by the
'module:function' strings), so the commands still answer `--help` at once. A plugin of your own
can be a copy of this file and one of the math modules next to it.
"""

from __future__ import annotations

import math

import vae_jax

__all__ = ["DIP_VAE_FIELDS", "INFO_VAE_FIELDS"]

# disentanglement_lib's study: λ_od in {1, 2, 5, 10, 20, 50}; λ_d = 10 λ_od (I) or λ_od (II).
DIP_VAE_FIELDS = {
    "dip_vae_i": {"dip_i_lambda_od": 10.0, "dip_i_lambda_d_factor": 10.0},
    "dip_vae_ii": {"dip_ii_lambda_od": 10.0, "dip_ii_lambda_d_factor": 1.0},
}
# The KL of the ELBO kept (α = 0) and Zhao et al.'s MMD weight λ = 1000.
INFO_VAE_FIELDS = {
    "infovae_alpha": 0.0,
    "infovae_lambda": 1000.0,
    "infovae_kernel": "imq",
    "infovae_bandwidth": 1.0,
}


def _refuse(message: str):
    raise vae_jax.ConfigError(message)


def _is_weight(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _needs_batch_pairs(config) -> None:
    if config.batch_size < 2:
        _refuse(
            f"batch_size={config.batch_size} with objective={config.objective!r}, which estimates "
            "a statistic of the batch's latents; allowed: >= 2."
        )


def _check_dip(config) -> None:
    _needs_batch_pairs(config)
    for field in DIP_VAE_FIELDS[config.objective]:
        value = config[field]
        if not (_is_weight(value) and value >= 0):
            _refuse(f"{field}={value!r} must be a finite number >= 0.")


def _check_info_vae(config) -> None:
    _needs_batch_pairs(config)
    alpha, lambda_ = config.infovae_alpha, config.infovae_lambda
    if not (_is_weight(alpha) and 0 <= alpha <= 1):
        _refuse(f"infovae_alpha={alpha!r} must be in [0, 1] (the KL's weight is 1 - alpha).")
    if not (_is_weight(lambda_) and lambda_ > 0 and alpha + lambda_ - 1 >= 0):
        _refuse(
            f"infovae_lambda={lambda_!r} must be a finite number > 0 with infovae_alpha + "
            "infovae_lambda >= 1 (the MMD's weight is alpha + lambda - 1)."
        )
    if config.infovae_kernel not in ("imq", "rbf"):
        _refuse(f"infovae_kernel={config.infovae_kernel!r} is not known; allowed: 'imq', 'rbf'.")
    bandwidth = config.infovae_bandwidth
    if not (_is_weight(bandwidth) and bandwidth > 0):
        _refuse(f"infovae_bandwidth={bandwidth!r} must be a finite number > 0.")


for _name, _fields in DIP_VAE_FIELDS.items():
    vae_jax.register_objective(
        _name,
        f"vae_jax.variants.dip_vae:build_{_name}",
        fields=_fields,
        validate=_check_dip,
        sweepable=(next(iter(_fields)),),  # λ_od, with λ_d = f λ_od following it
    )
vae_jax.register_objective(
    "info_vae",
    "vae_jax.variants.info_vae:build_info_vae",
    fields=INFO_VAE_FIELDS,
    validate=_check_info_vae,
    sweepable=("infovae_lambda",),
)
