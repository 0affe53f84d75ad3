"""The configuration schema: every field, its default, and its validation.

`get_config()` returns the default run, which reproduces the Flax VAE example (MLP 784-500-20,
batch 128, Adam 1e-3, 30 epochs, binarized MNIST). It also defines the schema: a config with a
field that is not here (a typo in an experiment file) is rejected by `validate_config`, with the
closest valid name suggested.

`experiments/*.py` start from this and change a few fields; `--config.<field>=<value>` overrides
on the command line.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any

import ml_collections

from vae_jax import data, registry
from vae_jax.errors import ConfigError

MODELS = ("mlp", "conv")  # the built-in models (`registry`; users register more)
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine", "burda")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "elu", "softplus")
# The built-in objectives' names (`registry`; users register more).
OBJECTIVES = registry.BUILTIN_OBJECTIVES
DAE_CORRUPTIONS = ("masking", "gaussian")
DTYPES = ("float32", "bfloat16")
MATMUL_PRECISIONS = ("default", "high", "highest")
EVAL_SPLITS = ("test", "valid")
PIPELINES = ("auto", "device", "stream")
STEP_LOOPS = ("auto", "scan", "host")
NAN_POLICIES = ("stop", "skip")

# Fields that may differ between a checkpoint and the run that resumes it: they change how long
# the run goes on, how often it saves and what it prints, never the computation of a step.
RESUME_SAFE_FIELDS = frozenset(
    {
        "num_epochs",
        "max_steps",
        "checkpoint_every_epochs",
        "max_to_keep",
        "progress_bar",
        "eval_batch_size",
        "num_image_examples",
        # The data pipeline moves the same batches by another route, with the same results.
        "data_dir",
        "pipeline",
        "stream_chunk_steps",
        "steps_per_call",
        # The same steps in a compiled loop or called one by one (equal up to float rounding);
        # with 'auto' a resumed run keeps the loop run.json recorded.
        "step_loop",
        "images_every_epochs",
    }
)


def objective_fields() -> dict[str, tuple[str, ...]]:
    """Each setting that only some objectives read, and which: from the registrations. A value
    set while another objective runs is refused; when neither a checkpoint's objective nor the
    resuming run's reads one, a changed value (or default) cannot change the computation."""
    readers: dict[str, tuple[str, ...]] = {}
    for spec in registry.objective_specs():
        for field in spec.reads:
            readers[field] = (*readers.get(field, ()), spec.name)
    return readers


def population_weight_field(objective: str) -> str | None:
    """The field `population_weights` sets for `objective`: its first sweepable one, or None."""
    sweepable = registry.objective_spec(objective).sweepable
    return sweepable[0] if sweepable else None


# The built-in objectives' weights (what `population_weights` sets), for the documentation.
POPULATION_WEIGHT_FIELDS = {
    name: population_weight_field(name) for name in OBJECTIVES if population_weight_field(name)
}


def get_config() -> ml_collections.ConfigDict:
    """The default run: the Flax VAE example's settings on statically binarized MNIST.

    Its fields, in this order, are the schema that `validate_config` checks every config against.
    """
    config = ml_collections.ConfigDict()
    for add_fields in (
        _add_data_fields,
        _add_model_fields,
        _add_objective_fields,
        _add_optimization_fields,
        _add_population_fields,
        _add_output_fields,
    ):
        add_fields(config)
    for spec in (*registry.objective_specs(), *registry.model_specs()):  # registered settings
        for field, default in spec.fields.items():
            if field in config:
                raise ConfigError(
                    f"{spec.name!r} would add the config field {field!r}, which "
                    "exists already; give its own settings new names."
                )
            config[field] = default
    return config


def _add_data_fields(config: ml_collections.ConfigDict) -> None:
    """Where the data come from and how they reach the device."""
    # Data.
    config.dataset = (
        "binarized_mnist"  # a name, or 'tfds:<name>', 'idx:<dir>', 'npz:<file>', 'images:<dir>'
    )
    config.image_size = 64  # side of the square images that 'images:' folders and celeb_a become
    config.data_dir = ""  # where TFDS finds prepared data sets ('' = its default)
    # 'device': the split lives on the device, each epoch is one compiled scan; 'stream': batches
    # are gathered on the host and prefetched; 'auto': 'device' when the split fits the budget.
    config.pipeline = "auto"
    config.stream_chunk_steps = 64  # streaming: steps per compiled call (and per transfer)
    # How a call runs its steps: 'scan' compiles them into one loop; 'host' calls the compiled
    # step once per step (for ops XLA runs slower inside loop bodies, jax#12868); 'auto' times
    # both at the start of the run and keeps the faster (`step_loops`), recorded in run.json.
    config.step_loop = "auto"
    config.eval_split = "test"  # evaluated after every epoch; 'valid' for model selection
    config.max_train_examples = 0  # 0 = the whole split; a prefix, for smoke runs and tests
    config.max_eval_examples = 0  # 0 = the whole split
    config.dynamic_binarization = False  # resample x ~ Bernoulli(pixel) each step (grayscale data)


def _add_model_fields(config: ml_collections.ConfigDict) -> None:
    """The encoder, the decoder and the likelihood p(x|z)."""
    # Model.
    config.model = "mlp"  # 'mlp' | 'conv'
    config.latents = 20
    config.hidden_sizes = (500,)  # MLP: hidden layer widths of the encoder (decoder mirrors)
    config.conv_features = (32, 64)  # conv: channels of the stride-2 convolutions
    config.conv_hidden = 256  # conv: width of the dense layer between convolutions and latents
    config.dropout_rate = 0.0  # conv encoder only
    config.activation = "relu"  # of every hidden layer: 'relu' | 'leaky_relu' | 'tanh' | ...
    # 'bfloat16': matrix products and convolutions in bf16 with float32 accumulation, float32
    # parameters, optimizer state and losses (mixed precision); 'float32': everything in f32.
    config.dtype = "float32"
    # float32 matrix products and convolutions: 'default' is XLA's choice per platform (TF32,
    # 10-bit mantissas, on NVIDIA GPUs since Ampere; bf16 passes on TPUs; full f32 on CPUs);
    # 'highest' asks for full float32 everywhere, 'high' for bf16x3 / TF32 where it differs.
    config.matmul_precision = "default"

    # Likelihood p(x|z), summed over pixels: every figure is in nats per example.
    config.likelihood = "bernoulli"  # 'bernoulli' | 'gaussian' (fixed sigma) | 'gaussian_learned'
    config.gaussian_scale = 1.0  # sigma of the fixed-scale Gaussian likelihood


def _add_objective_fields(config: ml_collections.ConfigDict) -> None:
    """What training minimises, and each objective's own settings."""
    # Objective (see vae_jax/objectives.py for the mathematics of each).
    # 'vae': -ELBO; 'beta_vae': recon + beta * KL; 'annealed_vae': recon + gamma * |KL - C|;
    # 'beta_tcvae': recon + KL + (beta - 1) * TC; 'factor_vae': recon + KL + gamma * TC (a
    # discriminator's estimate); 'iwae': the k-sample bound; 'ae' / 'dae': (denoising) autoencoders.
    config.objective = "vae"
    config.beta = 1.0  # beta_vae: the KL weight; beta_tcvae: the total-correlation weight
    config.kl_warmup_steps = 0  # the KL weight rises linearly from 0 over this many steps
    config.capacity_gamma = 1000.0  # annealed_vae
    config.capacity_max = 25.0  # annealed_vae: C_max in nats
    config.capacity_steps = 100_000  # annealed_vae: steps over which C rises from 0 to C_max
    config.factor_gamma = 10.0  # factor_vae: weight of the TC estimate (papers sweep 10-100)
    config.discriminator_hidden = (1000,) * 6  # factor_vae: the discriminator's hidden widths
    config.discriminator_learning_rate = 1e-4  # factor_vae: Adam(b1=0.5, b2=0.9)
    config.iwae_samples = 50  # iwae: k, importance samples per example in training
    config.dae_corruption = "masking"  # dae: 'masking' (zero pixels) | 'gaussian' (add noise)
    config.dae_noise_level = 0.25  # dae: fraction of pixels masked, or the noise's sigma


def _add_optimization_fields(config: ml_collections.ConfigDict) -> None:
    """The optimizer, the schedule, the length of training and its failure policy."""
    # Optimization.
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.lr_schedule = "constant"  # 'constant' | 'cosine' | 'warmup_cosine'
    config.warmup_steps = 0
    config.adam_eps = 1e-8
    config.weight_decay = 0.0  # adamw only
    config.batch_size = 128
    config.num_epochs = 30
    config.max_steps = 0  # 0 = no cap; otherwise stop after this many steps (smoke runs)
    config.seed = 0
    # A non-finite loss or gradient: 'stop' the run (the last good checkpoint is kept), or
    # 'skip' that update (parameters and optimizer state unchanged) and count it.
    config.nan_policy = "stop"
    # Steps per compiled call on the device (0 = a whole epoch per call). Between calls the run
    # can stop cleanly on SIGTERM/SIGINT, so this bounds how long a preemption waits.
    config.steps_per_call = 1000


def _add_population_fields(config: ml_collections.ConfigDict) -> None:
    """K models in one program."""
    # Populations: K models trained in one compiled program with vmap (1 = a single model).
    # Member k has seed `seed + k`, learning rate `population_learning_rates[k]` and its own
    # value of the objective's weight: `population_weights[k]` (POPULATION_WEIGHT_FIELDS: beta,
    # capacity_gamma, factor_gamma, dae_noise_level), or `population_betas[k]` for beta_vae and
    # beta_tcvae. An empty tuple means the config's own value for every member.
    config.population_size = 1
    config.population_betas = ()
    config.population_weights = ()
    config.population_learning_rates = ()


def _add_output_fields(config: ml_collections.ConfigDict) -> None:
    """Evaluation, checkpoints, pictures and the progress bar."""
    # Outputs.
    config.eval_batch_size = 1000
    config.checkpoint_every_epochs = 1
    config.max_to_keep = 3
    config.num_image_examples = 32  # test images reconstructed and prior samples drawn per grid
    config.images_every_epochs = 1  # draw the grids every this many epochs (and at the end)
    config.progress_bar = True


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def did_you_mean(value: Any, choices) -> str:
    """`"; did you mean 'x'?"` for the choice closest to a mistyped `value` ('' when none is
    close): a typo is then fixed from the message alone. Appended to a message's end, so that
    the message up to it reads the same with or without a close choice."""
    if not isinstance(value, str):
        return ""
    others = [str(choice) for choice in choices if choice != value]
    close = difflib.get_close_matches(value, others, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _with_suggestion(message: str, value: Any, choices) -> str:
    """`message` with `did_you_mean(value, choices)` in place of its final full stop."""
    hint = did_you_mean(value, choices)
    return f"{message.rstrip().removesuffix('.')}{hint}" if hint else message


def _check_choice(config, field: str, allowed: tuple[str, ...]) -> None:
    value = config[field]
    _require(
        value in allowed,
        _with_suggestion(
            f"{field}={value!r} is not known; allowed: {', '.join(repr(a) for a in allowed)}.",
            value,
            allowed,
        ),
    )


def _check_dataset(name: str) -> None:
    """`data.check_dataset_name`, whose message lists the data sets, with the closest name (or
    source prefix: 'image:<dir>' for 'images:<dir>') suggested."""
    try:
        data.check_dataset_name(name)
    except ConfigError as error:
        prefix, colon, argument = name.partition(":")
        if colon:
            close = difflib.get_close_matches(f"{prefix}:", data.SOURCE_PREFIXES, n=1)
            choices = [f"{close[0]}{argument}"] if close and argument else []
        else:
            choices = [*data.BUILTIN_NAMES, *data.TFDS_NAMES, *registry.dataset_names()]
        raise ConfigError(_with_suggestion(str(error), name, choices)) from None


def _check_int(config, field: str, minimum: int) -> None:
    value = config[field]
    _require(
        _is_int(value) and value >= minimum,
        f"{field}={value!r} must be an integer >= {minimum}.",
    )


def _check_positive_float(config, field: str, allow_zero: bool = False) -> None:
    value = config[field]
    ok = _is_number(value) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    bound = ">= 0" if allow_zero else "> 0"
    _require(ok, f"{field}={value!r} must be a finite number {bound}.")


def _check_sizes(config, field: str) -> None:
    value = config[field]
    ok = (
        isinstance(value, (tuple, list))
        and len(value) >= 1
        and all(_is_int(v) and v >= 1 for v in value)
    )
    _require(ok, f"{field}={value!r} must be a non-empty tuple of positive integers, e.g. (500,).")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Rejects an invalid config with one sentence naming the field, its value and what is allowed.

    Checks what can be checked without data; `data.load_splits` checks the rest (the batch size
    against the split's) right after loading the data, still before any compilation.

    Raises:
      ConfigError: the first problem found.
    """
    # In this order: each check may rely on the ones before it (a field exists before its value
    # is read, a value has its type before it is compared), and the first problem is reported.
    _check_fields(config)
    _check_choices(config)
    _check_integers(config)
    _check_floats(config)
    _check_objective(config)
    _check_flags(config)
    _check_combinations(config)


def _check_fields(config) -> None:
    """Exactly the schema's fields: an unknown one is most likely a typo, so the closest valid
    name is suggested; a missing one means the config was not built from `get_config()`."""
    schema = get_config()
    for field in config:
        if field not in schema:
            close = difflib.get_close_matches(field, list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise ConfigError(f"unknown config field {field!r}{hint}")
    for field in schema:
        _require(field in config, f"config field {field!r} is missing; start from get_config().")


def _check_choices(config) -> None:
    """The fields that name one of a few choices, the data set first (its check says which
    data sets there are)."""
    _require(isinstance(config.dataset, str), f"dataset={config.dataset!r} must be a string.")
    _check_dataset(config.dataset)
    for field, allowed in (
        ("pipeline", PIPELINES),
        ("step_loop", STEP_LOOPS),
        ("nan_policy", NAN_POLICIES),
        ("eval_split", EVAL_SPLITS),
        ("model", registry.model_names()),
        ("likelihood", LIKELIHOODS),
        ("optimizer", OPTIMIZERS),
        ("lr_schedule", LR_SCHEDULES),
        ("activation", ACTIVATIONS),
        ("dtype", DTYPES),
        ("matmul_precision", MATMUL_PRECISIONS),
        ("objective", registry.objective_names()),
        ("dae_corruption", DAE_CORRUPTIONS),
    ):
        _check_choice(config, field, allowed)


def _check_integers(config) -> None:
    """Counts and sizes: integers (a bool is not one, though Python counts it as an int), at
    least 1 where 0 would leave nothing to do, at least 0 where 0 means off or no limit."""
    for field in (
        "latents",
        "batch_size",
        "eval_batch_size",
        "num_epochs",
        "checkpoint_every_epochs",
        "max_to_keep",
        "conv_hidden",
        "image_size",
        "stream_chunk_steps",
        "population_size",
        "images_every_epochs",
        "capacity_steps",
        "iwae_samples",
    ):
        _check_int(config, field, 1)
    for field in (
        "max_train_examples",
        "max_eval_examples",
        "max_steps",
        "warmup_steps",
        "steps_per_call",
        "num_image_examples",
        "seed",
        "kl_warmup_steps",
    ):
        _check_int(config, field, 0)
    _check_sizes(config, "hidden_sizes")
    _check_sizes(config, "conv_features")
    _check_sizes(config, "discriminator_hidden")


def _check_floats(config) -> None:
    """Rates, scales and weights: finite numbers, positive or at least 0; the denoising level's
    range depends on the corruption (a fraction of pixels, or a noise sigma)."""
    for field in ("learning_rate", "gaussian_scale", "adam_eps", "discriminator_learning_rate"):
        _check_positive_float(config, field)
    for field in ("beta", "weight_decay", "capacity_gamma", "capacity_max", "factor_gamma"):
        _check_positive_float(config, field, allow_zero=True)
    level = config.dae_noise_level
    _require(
        _is_number(level)
        and math.isfinite(level)
        and (0.0 < level < 1.0 if config.dae_corruption == "masking" else level > 0.0),
        f"dae_noise_level={level!r} must be "
        + (
            "a fraction in (0, 1) of pixels to mask."
            if config.dae_corruption == "masking"
            else "a noise sigma > 0."
        ),
    )


def _check_flags(config) -> None:
    """The dropout rate (a probability below 1: a rate of 1 would drop every unit) and the
    switches, which must be bools: any other value would be read as true or false, not refused."""
    rate = config.dropout_rate
    _require(
        _is_number(rate) and 0.0 <= rate < 1.0,
        f"dropout_rate={rate!r} must be a number in [0, 1).",
    )
    for field in ("dynamic_binarization", "progress_bar"):
        _require(
            isinstance(config[field], bool),
            f"{field}={config[field]!r} must be True or False.",
        )


def _check_combinations(config) -> None:
    """Settings valid alone but not together: one the other makes meaningless (and so silently
    ignored) is a mistake in the experiment, reported rather than run."""
    _require(
        config.dropout_rate == 0.0 or config.model == "conv",
        f"dropout_rate={config.dropout_rate!r} applies to model='conv' only; "
        f"model={config.model!r} has no dropout.",
    )
    _require(
        config.weight_decay == 0.0 or config.optimizer == "adamw",
        f"weight_decay={config.weight_decay!r} needs optimizer='adamw'; "
        f"optimizer={config.optimizer!r} has none.",
    )
    _check_population(config)
    _require(
        config.lr_schedule != "warmup_cosine" or config.warmup_steps > 0,
        "lr_schedule='warmup_cosine' needs warmup_steps >= 1.",
    )


def _check_objective(config) -> None:
    """Settings that contradict the chosen objective (a silently ignored setting is a bug)."""
    objective = config.objective
    spec = registry.objective_spec(objective)
    if spec.validate is not None:
        spec.validate(config)
    variational = [s.name for s in registry.objective_specs() if s.variational]
    _require(
        spec.variational or config.kl_warmup_steps == 0,
        f"kl_warmup_steps={config.kl_warmup_steps!r} with objective={objective!r}, which has no KL "
        f"term; allowed with: {', '.join(repr(o) for o in variational)}.",
    )
    _check_unread_settings(config)
    weight = population_weight_field(objective)
    _require(
        not config.population_betas or weight == "beta",
        f"population_betas={tuple(config.population_betas)!r} with objective={objective!r}, "
        "which has no beta; per-member betas need objective='beta_vae' or 'beta_tcvae'"
        + (f", and population_weights sets this objective's {weight}." if weight else "."),
    )
    weighted = [s.name for s in registry.objective_specs() if s.sweepable]
    _require(
        not config.population_weights or weight is not None,
        f"population_weights={tuple(config.population_weights)!r} with objective={objective!r}, "
        f"which has no weight to sweep; allowed with: {', '.join(repr(o) for o in weighted)}.",
    )
    _require(
        not (config.population_weights and config.population_betas),
        "population_betas and population_weights are both set; give the members' weights once, "
        "in population_weights.",
    )


def _check_unread_settings(config) -> None:
    """A setting of another objective, changed from its default, would be ignored: refuse it."""
    defaults = get_config()
    for field, readers in objective_fields().items():
        if config.objective in readers or field not in config:
            continue
        value, default = config[field], defaults[field]
        if (tuple(value) if isinstance(value, list) else value) != default:
            raise ConfigError(
                f"{field}={value!r} is set, but objective={config.objective!r} does not read it "
                f"(it is read by {' and '.join(repr(r) for r in readers)} only); remove the "
                "setting or train that objective."
            )


def _check_population(config) -> None:
    """The per-member tuples: numbers, one per member; then every member's config must be valid
    on its own (a weight of 0.5 for dae_noise_level, say)."""
    for field in ("population_betas", "population_weights", "population_learning_rates"):
        values = config[field]
        positive = field == "population_learning_rates"
        _require(
            isinstance(values, (tuple, list))
            and all(_is_number(v) and math.isfinite(v) and v >= 0 for v in values)
            and (not positive or all(v > 0 for v in values)),
            f"{field}={values!r} must be a tuple of finite numbers ({'> 0' if positive else '>= 0'}).",
        )
        _require(
            len(values) in (0, config.population_size),
            f"{field} has {len(values)} values but population_size={config.population_size}; "
            "give one per member, or none.",
        )
    if config.population_size > 1 and (
        config.population_weights or config.population_learning_rates
    ):
        for k in range(config.population_size):
            try:
                validate_config(member_config(config, k))
            except ConfigError as error:
                raise ConfigError(f"population member {k}: {error}") from None


def member_config(config: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
    """The single-model config that population member `k` trains exactly as.

    Args:
      config: a population config.
      k: the member index, 0 <= k < population_size.

    Returns:
      A copy of `config` with seed + k, the member's weight (`population_weights[k]` into the
      objective's weight field, or `population_betas[k]` into beta) and learning rate, and
      population_size 1 without per-member tuples: what `train.train_and_evaluate` would run.

    Raises:
      ConfigError: k is not a member of the population.
    """
    size = config.population_size
    if not (isinstance(k, numbers.Integral) and 0 <= k < size):
        raise ConfigError(f"member {k!r} is not in the population; allowed: 0 to {size - 1}.")
    k = int(k)
    member = config.copy_and_resolve_references()
    member.seed = config.seed + k
    if config.population_betas:
        member.beta = float(config.population_betas[k])
    if config.population_weights:
        member[population_weight_field(config.objective)] = float(config.population_weights[k])
    if config.population_learning_rates:
        member.learning_rate = float(config.population_learning_rates[k])
    member.population_size = 1
    member.population_betas = ()
    member.population_weights = ()
    member.population_learning_rates = ()
    return member


def config_to_dict(config: ml_collections.ConfigDict | Mapping) -> dict:
    """A JSON-ready plain dict; tuples become lists so that dicts compare equal after a round trip."""
    plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}


def resume_incompatibilities(saved: Mapping, current: Mapping) -> list[str]:
    """Fields whose values differ in a way that would change the computation of a resumed run."""
    saved, current = config_to_dict(saved), config_to_dict(current)
    defaults = config_to_dict(get_config())
    objectives_in_play = {saved.get("objective", "vae"), current.get("objective", "vae")}
    readers = objective_fields()
    differences = []
    for field in sorted(set(saved) | set(current)):
        if field in RESUME_SAFE_FIELDS:
            continue
        if field in readers and not objectives_in_play & set(readers[field]):
            continue  # read by neither run's objective
        if field not in saved and current.get(field) == defaults.get(field):
            continue  # a field added since the checkpoint, at its default: the same computation
        if saved.get(field) != current.get(field):
            differences.append(
                f"{field}={saved.get(field)!r} in the checkpoint, {current.get(field)!r} now"
            )
    return differences
