"""Small random Stable Diffusion folders, built by diffusers and transformers themselves from configs and saved with
``save_pretrained``: what a user's downloaded folder looks like, at a size a test runs in seconds.

Two styles, as the published models differ:

- ``sd1``: conv projections in the UNet's transformers, quick-GELU CLIP, eps prediction, the PNDM scheduler config
  of SD 1.x (leading spacing, steps_offset 1, clip_sample false), the tokenizer in its older form (vocab.json,
  merges.txt);
- ``sd2``: linear projections, GELU CLIP, v prediction, a DDIM config with trailing spacing, head counts per level,
  the tokenizer as current transformers saves it (tokenizer.json) with "!" as its padding.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from clip_vocab import learn_vocab, write_plain_folder

DIFFUSERS_MISSING = "diffusers and transformers are test dependencies (pip install -e .[dev])"


def build_pipeline(style: str, root: Path, seed: int = 0):
    """A diffusers ``StableDiffusionPipeline`` of random weights in ``style``, float32, on the CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sd2 = style == "sd2"
    vocab, merges = learn_vocab()
    tokenizer_folder = write_plain_folder(root / f"{style}-tokenizer-source", vocab, merges, pad="!" if sd2 else "<|endoftext|>")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4, 4) if sd2 else 2, use_linear_projection=sd2, norm_num_groups=16)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16,
        sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu", bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["!" if sd2 else "<|endoftext|>"]))
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
                  steps_offset=1)
    scheduler = (DDIMScheduler(**common, prediction_type="v_prediction", timestep_spacing="trailing",
                               clip_sample=False) if sd2 else PNDMScheduler(**common, skip_prk_steps=True))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(
        tokenizer_folder), unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(torch.float32)


def save_folder(pipeline, folder: Path, style: str) -> Path:
    """``save_pretrained`` with safetensors; the sd1 style keeps the tokenizer's older form (vocab.json, merges.txt),
    the files :func:`build_pipeline` made it from."""
    pipeline.save_pretrained(folder, safe_serialization=True)
    if style == "sd1":
        shutil.rmtree(folder / "tokenizer")
        shutil.copytree(Path(pipeline.tokenizer.name_or_path), folder / "tokenizer")
        # SD 1.5's published PNDM config carries clip_sample false, which DDIM built from it reads (PNDM has none).
        config_file = folder / "scheduler" / "scheduler_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "clip_sample": False}, indent=2))
    return folder
