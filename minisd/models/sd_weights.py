"""Published Stable Diffusion weights into minisd's modules.

The tables below map each minisd parameter name to the diffusers (UNet, autoencoder) or transformers (CLIP text
encoder) name it is published under; they are the whole difference between the two codes' weights. Where minisd
computes keys and values in one matrix multiply, its ``to_key_value`` is the published ``to_k`` and ``to_v``
stacked (``{kv}`` below); where SD 1.x stores a token projection as a 1x1 convolution, minisd's linear layer takes
the same matrix.

Weights are read from safetensors only: a pickle (``.bin``, ``.ckpt``) can run any code it carries when loaded,
so it is refused with the one-line command that converts it. The module is first built on PyTorch's ``meta``
device (shapes, no memory), every tensor's name, shape and type are checked against it from the file's header,
and only then are the tensors read, memory-mapped, one at a time into the module: no second copy of the weights.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from minisd.errors import CheckpointError
from minisd.models.sd_configs import safe_child

WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
FLOAT_TYPES = ("F16", "BF16", "F32", "F64")
# Tensors a published file may carry that are not weights (transformers' fixed position indices).
NOT_WEIGHTS = ("text_model.embeddings.position_ids", "embeddings.position_ids")

Rules = list[tuple[str, str]]  # (regular expression on a minisd name, its published replacement), applied in order

ATTENTION_NAMES: Rules = [(r"\.to_query\.", ".to_q."), (r"\.to_key_value\.", ".to_{kv}."), (r"\.to_out\.", ".to_out.0.")]

UNET_NAMES: Rules = [
    (r"^time_embedding\.mlp\.0\.", "time_embedding.linear_1."), (r"^time_embedding\.mlp\.2\.", "time_embedding.linear_2."),
    (r"^input_conv\.", "conv_in."),
    (r"^down_levels\.(\d+)\.(\d+)\.residual\.", r"down_blocks.\1.resnets.\2."),
    (r"^down_levels\.(\d+)\.(\d+)\.attention\.", r"down_blocks.\1.attentions.\2."),
    (r"^downsamples\.(\d+)\.", r"down_blocks.\1.downsamplers.0.conv."),
    (r"^middle\.0\.residual\.", "mid_block.resnets.0."), (r"^middle\.0\.attention\.", "mid_block.attentions.0."),
    (r"^middle\.1\.residual\.", "mid_block.resnets.1."),
    (r"^up_levels\.(\d+)\.(\d+)\.residual\.", r"up_blocks.\1.resnets.\2."),
    (r"^up_levels\.(\d+)\.(\d+)\.attention\.", r"up_blocks.\1.attentions.\2."),
    (r"^upsamples\.(\d+)\.1\.", r"up_blocks.\1.upsamplers.0.conv."),
    (r"^output\.0\.", "conv_norm_out."), (r"^output\.2\.", "conv_out."),
    # inside a residual block
    (r"\.in_layers\.0\.", ".norm1."), (r"\.in_layers\.2\.", ".conv1."),
    (r"\.embedding_to_scale_shift\.1\.", ".time_emb_proj."), (r"\.out_norm\.", ".norm2."),
    (r"\.out_layers\.2\.", ".conv2."), (r"\.skip\.", ".conv_shortcut."),
    # inside a spatial transformer
    (r"\.in_norm\.", ".norm."), (r"\.self_norm\.", ".transformer_blocks.0.norm1."),
    (r"\.self_attention\.", ".transformer_blocks.0.attn1."), (r"\.cross_norm\.", ".transformer_blocks.0.norm2."),
    (r"\.cross_attention\.", ".transformer_blocks.0.attn2."),
    (r"\.feed_forward_norm\.", ".transformer_blocks.0.norm3."),
    (r"\.feed_forward\.0\.proj\.", ".transformer_blocks.0.ff.net.0.proj."),
    (r"\.feed_forward\.1\.", ".transformer_blocks.0.ff.net.2."),
    *ATTENTION_NAMES,
]

TEXT_ENCODER_NAMES: Rules = [
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^position_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^blocks\.(\d+)\.", r"text_model.encoder.layers.\1."), (r"^final_norm\.", "text_model.final_layer_norm."),
    (r"\.attention_norm\.", ".layer_norm1."), (r"\.attention\.to_query\.", ".self_attn.q_proj."),
    (r"\.attention\.to_key_value\.", ".self_attn.{kv}_proj."), (r"\.attention\.to_out\.", ".self_attn.out_proj."),
    (r"\.feed_forward_norm\.", ".layer_norm2."), (r"\.feed_forward\.0\.", ".mlp.fc1."), (r"\.feed_forward\.2\.", ".mlp.fc2."),
]

CODEC_BLOCK_NAMES: Rules = [
    (r"\.branch\.0\.", ".norm1."), (r"\.branch\.2\.", ".conv1."), (r"\.branch\.3\.", ".norm2."),
    (r"\.branch\.5\.", ".conv2."), (r"\.skip\.", ".conv_shortcut."), (r"\.norm\.", ".group_norm."),
    (r"\.attention\.to_query\.", ".to_q."), (r"\.attention\.to_key_value\.", ".to_{kv}."),
    (r"\.attention\.to_out\.", ".to_out.0."),
]
# Autoencoders saved by diffusers before 0.14 name the middle attention's layers the older way.
OLD_CODEC_ATTENTION = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def codec_names(settings: dict) -> Rules:
    """The name table of a :class:`~minisd.models.latent_autoencoder.LatentAutoencoder` with SD's layout, from its
    settings: its encoder's and decoder's layers are numbered in one ``nn.Sequential`` each, in the order
    :mod:`minisd.nn.latent_codec` builds them, and the published names follow that order level by level."""
    levels, blocks = len(settings["channel_mults"]), settings["num_res_blocks"]
    middle = ["mid_block.resnets.0"] + (["mid_block.attentions.0", "mid_block.resnets.1"]
                                        if settings["middle_attention"] else [])
    quant = settings["quant_convs"]
    encoder = ["encoder.conv_in"]
    for level in range(levels):
        encoder += [f"encoder.down_blocks.{level}.resnets.{j}" for j in range(blocks)]
        encoder += [f"encoder.down_blocks.{level}.downsamplers.0.conv|1"] if level < levels - 1 else []
    encoder += [f"encoder.{name}" for name in middle] + ["encoder.conv_norm_out", None, "encoder.conv_out"]
    encoder += ["quant_conv"] if quant else []
    decoder = (["post_quant_conv"] if quant else []) + ["decoder.conv_in"] + [f"decoder.{name}" for name in middle]
    for published_level in range(levels):  # the published decoder numbers its levels coarsest first
        decoder += [f"decoder.up_blocks.{published_level}.resnets.{j}" for j in range(settings["decoder_res_blocks"])]
        decoder += [f"decoder.up_blocks.{published_level}.upsamplers.0.conv|1"] if published_level < levels - 1 else []
    decoder += ["decoder.conv_norm_out", None, "decoder.conv_out"]
    rules: Rules = []
    for part, names in (("encoder", encoder), ("decoder", decoder)):
        for index, name in enumerate(names):
            if name is not None:  # None: an activation, no weights
                name, _, inner = name.partition("|")  # "|1": the convolution is the second layer of a Sequential
                rules.append((rf"^{part}\.layers\.{index}\.{inner + '.' if inner else ''}", f"{name}."))
    return rules + CODEC_BLOCK_NAMES


def published_names(name: str, rules: Rules) -> list[str]:
    """The published tensor name(s) of minisd's parameter ``name``: two (keys, then values) for ``to_key_value``."""
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return [name.replace("{kv}", "k"), name.replace("{kv}", "v")] if "{kv}" in name else [name]


def weights_file(part: Path) -> Path:
    """The safetensors file of a part folder; a pickle in its place is refused, with how to convert it."""
    stem = WEIGHT_STEMS[part.name]
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if safe_child(part, name).is_file():
            return part / name
    pickles = sorted(file.name for file in part.iterdir() if file.suffix in PICKLE_SUFFIXES) if part.is_dir() else []
    if pickles:
        raise CheckpointError(
            f"{part / pickles[0]} is a pickle file, which runs whatever code it carries when loaded; minisd reads "
            f"safetensors only. Convert the folder once, on a machine you trust: python -c \"from diffusers import "
            f"StableDiffusionPipeline as P; P.from_pretrained('{part.parent}').save_pretrained('{part.parent}-safe')\"")
    if part.is_dir() and any(file.name.endswith(".safetensors.index.json") for file in part.iterdir()):
        raise CheckpointError(f"{part} holds its weights in several shards; minisd reads one {stem}.safetensors")
    raise CheckpointError(f"{part / (stem + '.safetensors')} is missing: the Stable Diffusion folder is incomplete")


def load_weights(module: nn.Module, file: Path, rules: Rules, config_file: Path,
                 buffers: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Fill ``module`` (built on the meta device) with the tensors of ``file``, named by ``rules``.

    Every expected tensor is looked up and its shape and type checked from the header before any is read; a missing
    one, a shape the config does not describe, or a tensor the config does not account for is one
    :class:`CheckpointError` naming the file. ``buffers``: values that are not in the file (the latent scale).
    """
    try:
        handle = safe_open(str(file), framework="pt")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file} cannot be read as safetensors ({err}): the file is damaged or incomplete; "
                              f"download it again") from None
    buffers = buffers or {}
    with handle:
        available = set(handle.keys())
        plan: dict[str, tuple[list[str], torch.Size]] = {}
        for name, tensor in module.state_dict().items():
            if name in buffers:
                continue
            sources = [_present(source, available) for source in published_names(name, rules)]
            missing = [source for source, found in zip(published_names(name, rules), sources) if found is None]
            if missing:
                raise CheckpointError(f"{file} has no tensor {missing[0]}, which {config_file} describes: the "
                                      f"weights and the config are of different models")
            shapes = [handle.get_slice(source).get_shape() for source in sources]
            stacked = [sum(shape[0] for shape in shapes), *shapes[0][1:]] if shapes[0] else []
            if math.prod(stacked) != tensor.numel() or stacked[:tensor.dim()] != list(tensor.shape):
                raise CheckpointError(f"{file}: {sources[0]} has shape {shapes[0]}, but {config_file} describes "
                                      f"{list(tensor.shape)}: the weights and the config are of different models")
            kinds = {handle.get_slice(source).get_dtype() for source in sources}
            if not kinds <= set(FLOAT_TYPES):
                raise CheckpointError(f"{file}: {sources[0]} holds {kinds.pop()} values, not floating-point weights")
            plan[name] = (sources, tensor.shape)
        unexplained = available - {source for sources, _ in plan.values() for source in sources} - set(NOT_WEIGHTS)
        if unexplained:
            raise CheckpointError(f"{file} has {len(unexplained)} tensors that {config_file} does not describe "
                                  f"(such as {sorted(unexplained)[0]}): the weights and the config are of different models")
        state = {name: _read(handle, sources).reshape(shape).float() for name, (sources, shape) in plan.items()}
    module.load_state_dict({**state, **buffers}, assign=True)
    return module.eval().requires_grad_(False)


def _read(handle, sources: list[str]) -> torch.Tensor:
    """One tensor, or keys and values stacked. A float32 tensor alone stays as safetensors maps it from the file (its
    pages are read when first used, and never copied); only the stacked ones and other types get memory of their own."""
    tensors = [handle.get_tensor(source) for source in sources]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _present(name: str, available: set[str]) -> str | None:
    """``name`` if the file has it, else the other spelling it is published under (transformers 5 saves the text
    encoder without its ``text_model.`` prefix; diffusers before 0.14 named the autoencoder's attention
    query/key/value/proj_attn), else None."""
    spellings = [name, name.removeprefix("text_model.")]
    spellings += [name.replace(new, old) for new, old in OLD_CODEC_ATTENTION.items() if new in name]
    return next((spelling for spelling in spellings if spelling in available), None)


def fingerprint(files: list[Path], sample_bytes: int = 4096, samples: int = 16) -> str:
    """10 hex digits that identify a folder's weights without reading gigabytes: the sha256 of each file's name, size,
    safetensors header (every tensor's name, type, shape and place) and 16 blocks of 4 kB spread over its data. Two
    fine-tunes of one model differ in every block, so they differ here; the whole hash would read 2-5 GB per load."""
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.parent.name}/{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(min(header_size, 1 << 24)))
            for i in range(samples):
                handle.seek(size * i // samples)
                digest.update(handle.read(sample_bytes))
    return digest.hexdigest()[:10]
