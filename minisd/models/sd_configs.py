"""A published Stable Diffusion folder's configs, read as the settings of minisd's own modules.

A diffusers folder (``model_index.json``; ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)
describes each part by a JSON config. Each reader below turns one into the keyword arguments of the minisd module
that computes the same function (:class:`~minisd.nn.UNet`, :class:`~minisd.models.latent_autoencoder.LatentAutoencoder`,
:class:`~minisd.text.TextEncoder`, :class:`~minisd.diffusion.discrete.DiscreteSchedule`), and refuses what that
module does not implement.

A downloaded folder is untrusted input. Every value is checked against a range before anything is built (no
10^9-channel layer reaches an allocator), every problem is one :class:`CheckpointError` naming the file and the
key, a config names no path and no code that is ever followed (custom pipeline classes and remote code are refused,
not run), and a part is read only from its fixed folder name, which must lie inside the model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from minisd.diffusion.discrete import BETA_SCHEDULES, DISCRETE_SPACINGS
from minisd.errors import CheckpointError

INDEX = "model_index.json"
MAX_CONFIG_BYTES = 1 << 20  # a config is a few kB; a larger one is not a config
MAX_WIDTH = 1 << 16  # channels, hidden sizes, vocabulary rows of one layer: SD's largest is 1280 (49408 rows)

PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
# The parts minisd reads: folder name -> (library, the classes it may name).
PARTS = {
    "unet": ("diffusers", ("UNet2DConditionModel",)),
    "vae": ("diffusers", ("AutoencoderKL",)),
    "text_encoder": ("transformers", ("CLIPTextModel",)),
    "tokenizer": ("transformers", ("CLIPTokenizer", "CLIPTokenizerFast")),
    "scheduler": ("diffusers", ("PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler",
                                "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "LMSDiscreteScheduler",
                                "HeunDiscreteScheduler", "UniPCMultistepScheduler")),
}
# Parts a published folder may carry that minisd does not use (never read).
UNUSED_PARTS = ("safety_checker", "feature_extractor", "image_encoder")

# The sampler a folder's scheduler class asks for; minisd has no PNDM, LMS or UniPC, and DPM-Solver++(2M) is the
# one of its samplers that serves the same purpose (a good picture in 20-25 steps).
DEFAULT_SAMPLERS = {"DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "EulerDiscreteScheduler": "euler",
                    "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}

Rule = tuple[Callable[[Any], bool], str]  # (test, what a good value is)


def _whole(low: int, high: int) -> Rule:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
            f"a whole number from {low} to {high}")


def _number(low: float, high: float) -> Rule:
    return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high,
            f"a number from {low:g} to {high:g}")


def _one_of(*values: Any) -> Rule:
    return (lambda v: any(v == value and type(v) is type(value) for value in values),
            " or ".join(json.dumps(value) for value in values))


def _list_of(rule: Rule, low: int = 1, high: int = 8) -> Rule:
    test, description = rule
    return (lambda v: isinstance(v, list) and low <= len(v) <= high and all(test(item) for item in v),
            f"a list of {low} to {high} items, each {description}")


def _one_or_list(low: int, high: int) -> Rule:
    """A whole number in [low, high], or a list of them (diffusers' per-level settings)."""
    (one, _), (many, _) = _whole(low, high), _list_of(_whole(low, high))
    return (lambda v: one(v) or many(v), f"a whole number from {low} to {high}, or a list of them")


def _or_null(rule: Rule) -> Rule:
    test, description = rule
    return (lambda v: v is None or test(v), f"null or {description}")


CHANNELS = _whole(1, MAX_WIDTH)
BOOL = _one_of(True, False)
REQUIRED = object()


def safe_child(folder: Path, name: str) -> Path:
    """``folder/name``, refused unless it is a plain name and resolves (symbolic links followed) inside ``folder``."""
    path = folder / name
    if name in ("", ".", "..") or "/" in name or "\\" in name or not path.resolve().is_relative_to(folder.resolve()):
        raise CheckpointError(f"{path} lies outside the model folder {folder}: a downloaded folder may name only "
                              f"files inside itself")
    return path


def read_json(file: Path) -> dict:
    """A JSON object from ``file``, refused in one line if missing, too large, or not a JSON object."""
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{file} is {file.stat().st_size} bytes, too large for a config; the folder is damaged")
        values = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing: the Stable Diffusion folder is incomplete") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{file} is not readable JSON ({err}); the folder is damaged") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{file} is not a JSON object; the folder is damaged")
    return values


class Config:
    """One config file's values, taken key by key against a rule; :meth:`finish` refuses what was not taken."""

    def __init__(self, file: Path):
        self.file, self.values, self.taken = file, read_json(file), set()

    def take(self, key: str, rule: Rule, default: Any = REQUIRED) -> Any:
        value = self.values.get(key, default)
        self.taken.add(key)
        if value is REQUIRED:
            raise CheckpointError(f"{self.file} has no {key}, which minisd needs to build the model")
        test, description = rule
        if not test(value):
            raise CheckpointError(f"{self.file} has {key} = {json.dumps(value)[:80]}; minisd reads {description}")
        return value

    def ignore(self, *keys: str) -> None:
        """Keys that do not change the function the model computes (sizes for documentation, dtypes, sampler
        preferences, dropout)."""
        self.taken.update(keys)

    def finish(self) -> None:
        """Refuse a key minisd did not read, unless it is metadata (``_...``) or switched off (null, false)."""
        for key, value in self.values.items():
            if key not in self.taken and not key.startswith("_") and value not in (None, False, [], {}):
                raise CheckpointError(f"{self.file} sets {key} = {json.dumps(value)[:80]}, which minisd does not "
                                      f"implement; this is not a Stable Diffusion 1.x/2.x part it can read")


def read_index(folder: Path) -> dict[str, str]:
    """The part folders of ``model_index.json``, checked: a Stable Diffusion pipeline of known parts, nothing else.

    Returns ``{part: class name}`` for the parts minisd reads.
    """
    index = read_json(safe_child(folder, INDEX))
    file = folder / INDEX
    if index.get("_class_name") not in PIPELINES:
        raise CheckpointError(f"{file} names the pipeline {json.dumps(index.get('_class_name'))}; minisd reads "
                              f"{' and '.join(PIPELINES)} folders and never runs a folder's own pipeline code")
    classes = {}
    for name, entry in index.items():
        if name.startswith("_") or name == "requires_safety_checker" or (name in UNUSED_PARTS and isinstance(entry, list)):
            continue
        safe_child(folder, name)  # refuses "../unet", "/etc", "a/b" before anything else
        if name not in PARTS:
            if entry in (None, [None, None]):
                continue
            raise CheckpointError(f"{file} names a part {name!r} that Stable Diffusion 1.x/2.x has not; "
                                  f"minisd reads {', '.join(PARTS)}")
        library, known = PARTS[name]
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] == library and entry[1] in known):
            raise CheckpointError(f"{file} gives {name} as {json.dumps(entry)[:80]}; minisd reads "
                                  f"[\"{library}\", one of {', '.join(known)}] (a folder's own classes are never run)")
        classes[name] = entry[1]
    missing = [name for name in PARTS if name not in classes]
    if missing:
        raise CheckpointError(f"{file} names no {', '.join(missing)}: the Stable Diffusion folder is incomplete")
    return classes


def unet_settings(config: Config) -> dict[str, Any]:
    """``unet/config.json`` -> the keyword arguments of :class:`minisd.nn.UNet` that build SD's UNet, and its latent
    ``sample_size`` (the side of the pictures it was trained on, over the autoencoder's factor)."""
    channels = config.take("block_out_channels", _list_of(CHANNELS))
    down = config.take("down_block_types", _list_of(_one_of("CrossAttnDownBlock2D", "DownBlock2D")))
    up = config.take("up_block_types", _list_of(_one_of("CrossAttnUpBlock2D", "UpBlock2D")))
    if len(down) != len(channels) or [kind.replace("Down", "Up") for kind in reversed(down)] != up:
        raise CheckpointError(f"{config.file}: down_block_types, up_block_types and block_out_channels do not "
                              f"describe one UNet level per channel count, mirrored; minisd builds only that layout")
    if any(width % channels[0] for width in channels):
        raise CheckpointError(f"{config.file} has block_out_channels = {channels}; minisd builds each level as a "
                              f"multiple of the first")
    # diffusers reads attention_head_dim as the head count when num_attention_heads is unset, as SD 1.x and 2.x are.
    heads = config.take("num_attention_heads", _or_null(_one_or_list(1, 1024)), None) or \
        config.take("attention_head_dim", _one_or_list(1, 1024))
    config.ignore("attention_head_dim")
    heads = [heads] * len(channels) if isinstance(heads, int) else heads
    if len(heads) != len(channels) or any(width % count for width, count in zip(channels, heads)):
        raise CheckpointError(f"{config.file}: {heads} attention heads do not divide the levels' {channels} channels")
    groups = config.take("norm_num_groups", _whole(1, 1024), 32)
    if any(width % groups for width in channels):
        raise CheckpointError(f"{config.file}: norm_num_groups = {groups} does not divide {channels}")
    layers = config.take("layers_per_block", _one_or_list(1, 16))
    if isinstance(layers, list) and len(set(layers)) != 1:
        raise CheckpointError(f"{config.file} has layers_per_block = {layers}; minisd builds as many at every level")
    for key, rule, default in (
            ("mid_block_type", _one_of("UNetMidBlock2DCrossAttn"), "UNetMidBlock2DCrossAttn"),
            ("flip_sin_to_cos", _one_of(True), True), ("freq_shift", _one_of(0), 0),
            ("act_fn", _one_of("silu"), "silu"), ("norm_eps", _one_of(1e-5), 1e-5),
            ("time_embedding_type", _one_of("positional"), "positional"),
            ("transformer_layers_per_block", _one_of(1, [1] * len(channels)), 1),
            ("downsample_padding", _one_of(1), 1), ("mid_block_scale_factor", _one_of(1, 1.0), 1),
            ("conv_in_kernel", _one_of(3), 3), ("conv_out_kernel", _one_of(3), 3),
            ("resnet_out_scale_factor", _one_of(1, 1.0), 1.0), ("attention_type", _one_of("default"), "default"),
            ("only_cross_attention", _one_of(False, [False] * len(channels)), False),
            ("use_linear_projection", BOOL, False), ("upcast_attention", BOOL, False)):
        config.take(key, rule, default)
    config.ignore("dropout", "addition_embed_type_num_heads")  # the latter is read only with an addition embedding
    config.take("center_input_sample", _one_of(False), False)
    # diffusers draws sample_size * 8 pixels by default: 64 -> 512 for SD 1.x and 2.x-base, 96 -> 768 for 2.x-v.
    sample_size = config.take("sample_size", _whole(1, 1024), 64)
    context_dim = config.take("cross_attention_dim", CHANNELS)
    time_conditioning = config.take("resnet_time_scale_shift", _one_of("default", "scale_shift"), "default")
    in_channels = config.take("in_channels", _whole(1, 64))
    settings = dict(in_channels=in_channels, out_channels=config.take("out_channels", _whole(1, 64)),
                    base_channels=channels[0], channel_mults=[width // channels[0] for width in channels],
                    num_res_blocks=layers if isinstance(layers, int) else layers[0],
                    attention_levels=[level for level, kind in enumerate(down) if kind.startswith("CrossAttn")],
                    num_heads=heads, context_dim=context_dim, groups=groups, middle_attention=True,
                    time_conditioning="add" if time_conditioning == "default" else "scale_shift", transformer=True,
                    time_shift=-1.0, upsample_to_skip=True)
    config.finish()
    return {**settings, "sample_size": sample_size}


def autoencoder_settings(config: Config) -> dict[str, Any]:
    """``vae/config.json`` -> the keyword arguments of :class:`LatentAutoencoder` that build SD's autoencoder, with
    its ``image_shape`` from ``sample_size`` and its ``latent_scale`` (``scaling_factor``)."""
    channels = config.take("block_out_channels", _list_of(CHANNELS))
    for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if config.take(key, _list_of(_one_of(kind))) != [kind] * len(channels):
            raise CheckpointError(f"{config.file} has {len(config.values[key])} {key} for {len(channels)} levels")
    if any(width % channels[0] for width in channels):
        raise CheckpointError(f"{config.file} has block_out_channels = {channels}; minisd builds each level as a "
                              f"multiple of the first")
    groups = config.take("norm_num_groups", _whole(1, 1024), 32)
    if any(width % groups for width in channels):
        raise CheckpointError(f"{config.file}: norm_num_groups = {groups} does not divide {channels}")
    quant = config.take("use_quant_conv", BOOL, True)
    if config.take("use_post_quant_conv", BOOL, True) != quant:
        raise CheckpointError(f"{config.file}: use_quant_conv and use_post_quant_conv differ; minisd keeps both or none")
    config.take("act_fn", _one_of("silu"), "silu")
    config.take("shift_factor", _one_of(None, 0, 0.0), None)
    config.ignore("force_upcast")
    size = config.take("sample_size", _whole(8, 4096), 512)
    layers = config.take("layers_per_block", _whole(1, 16))
    settings = dict(image_shape=[config.take("in_channels", _whole(1, 4)), size, size],
                    latent_channels=config.take("latent_channels", _whole(1, 64)), base_channels=channels[0],
                    channel_mults=[width // channels[0] for width in channels], num_res_blocks=layers,
                    groups=groups, norm_eps=1e-6, middle_attention=config.take("mid_block_add_attention", BOOL, True),
                    decoder_res_blocks=layers + 1, asymmetric_downsample=True, quant_convs=quant)
    if config.take("out_channels", _whole(1, 4)) != settings["image_shape"][0]:
        raise CheckpointError(f"{config.file}: in_channels and out_channels differ; an autoencoder gives back its input")
    scale = config.take("scaling_factor", _number(1e-6, 1e6), 0.18215)
    config.finish()
    return {**settings, "latent_scale": float(scale)}


def text_encoder_settings(config: Config) -> dict[str, Any]:
    """``text_encoder/config.json`` (transformers' CLIPTextConfig) -> the keyword arguments of :class:`TextEncoder`."""
    config.take("architectures", _one_of(["CLIPTextModel"]), ["CLIPTextModel"])
    config.take("model_type", _one_of("clip_text_model"), "clip_text_model")
    dim = config.take("hidden_size", CHANNELS)
    heads = config.take("num_attention_heads", _whole(1, 1024))
    if dim % heads:
        raise CheckpointError(f"{config.file}: {heads} attention heads do not divide hidden_size = {dim}")
    config.ignore("projection_dim", "attention_dropout", "dropout", "initializer_range", "initializer_factor",
                  "bos_token_id", "eos_token_id", "pad_token_id", "dtype", "torch_dtype", "transformers_version",
                  "id2label", "label2id", "output_attentions", "output_hidden_states", "return_dict", "problem_type",
                  "chunk_size_feed_forward", "is_encoder_decoder", "name_or_path", "tie_word_embeddings",
                  "use_bfloat16", "architectures", "layer_norm_eps")
    settings = dict(vocab_size=config.take("vocab_size", _whole(2, 1 << 20)),
                    max_length=config.take("max_position_embeddings", _whole(2, 4096)), dim=dim,
                    depth=config.take("num_hidden_layers", _whole(1, 128)), num_heads=heads,
                    mlp_dim=config.take("intermediate_size", _whole(1, 1 << 18)), causal=True,
                    activation=config.take("hidden_act", _one_of("quick_gelu", "gelu")), bias=True,
                    norm_eps=float(config.take("layer_norm_eps", _number(1e-12, 1e-2), 1e-5)))
    config.finish()
    return settings


def scheduler_settings(config: Config, class_name: str) -> dict[str, Any]:
    """``scheduler/scheduler_config.json`` -> the noise schedule (``betas`` and the grid settings of
    :class:`~minisd.diffusion.discrete.DiscreteSchedule`), the prediction and the default sampler.

    Settings that change the noise levels or what the network predicts are read or refused; those that only pick
    how diffusers samples (solver order, Karras sigmas, PNDM's Runge-Kutta steps) are minisd's own choice here.
    """
    steps = config.take("num_train_timesteps", _whole(2, 10_000), 1000)
    trained = config.take("trained_betas", _or_null(_list_of(_number(0, 0.999), steps, steps)), None)
    schedule = dict(beta_schedule=config.take("beta_schedule", _one_of(*BETA_SCHEDULES), "linear"),
                    beta_start=float(config.take("beta_start", _number(0, 0.5), 0.0001)),
                    beta_end=float(config.take("beta_end", _number(0, 0.999), 0.02)), num_steps=steps)
    for key in ("thresholding", "rescale_betas_zero_snr"):
        config.take(key, _one_of(False), False)
    config.take("timestep_type", _one_of("discrete"), "discrete")
    config.take("interpolation_type", _one_of("linear"), "linear")
    config.take("final_sigmas_type", _one_of("zero", "sigma_min"), "zero")
    config.ignore("skip_prk_steps", "solver_order", "algorithm_type", "solver_type", "lower_order_final",
                  "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                  "euler_at_final", "variance_type", "sample_max_value",
                  "dynamic_thresholding_ratio", "lambda_min_clipped", "disable_corrector", "predict_x0",
                  "sigma_min", "sigma_max", "use_flow_sigmas", "flow_shift", "final_sigmas_type", "s_noise",
                  "use_dynamic_shifting", "time_shift_type")
    algorithm = config.values.get("algorithm_type")
    # diffusers marks the settings a config left at its class's default; another scheduler class built from it
    # (from_config) then takes its own default instead. So does minisd: unset means each sampler's own.
    defaulted = config.values.get("_use_default_values", [])
    defaulted = defaulted if isinstance(defaulted, list) else []
    settings = dict(betas=trained, schedule=schedule,
                    prediction=PREDICTIONS[config.take("prediction_type", _one_of(*PREDICTIONS), "epsilon")],
                    steps_offset=config.take("steps_offset", _whole(0, steps - 1), 0),
                    set_alpha_to_one=config.take("set_alpha_to_one", _one_of(None, True, False), None),
                    timestep_spacing=config.take("timestep_spacing", _one_of(None, *DISCRETE_SPACINGS), None),
                    clip_sample=config.take("clip_sample", _one_of(None, True, False), None),
                    clip_sample_range=float(config.take("clip_sample_range", _number(1e-3, 1e3), 1.0)),
                    sampler=("dpmpp_2m_sde" if algorithm == "sde-dpmsolver++" else
                             DEFAULT_SAMPLERS.get(class_name, "dpmpp_2m")))
    for key in ("set_alpha_to_one", "timestep_spacing", "clip_sample"):
        if key in defaulted:
            settings[key] = None
    config.finish()
    return settings
