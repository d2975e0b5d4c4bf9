"""Figures of the chapter "Stable Diffusion": a prompt grid, cross-attention maps over the sampling steps,
and image-to-image and inpainting from one init image. ``minisd figures text-to-image MODEL``."""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

from minisd.figures.plotting import save_figure, show_image_grid
from minisd.pipelines import TextToImagePipeline

DIGIT_PROMPTS = [f"a handwritten digit {k}" for k in range(10)] + [
    "a thick, right-slanted handwritten 3", "a thin, upright handwritten 3", "the number seven, wide"]
SHAPES_PROMPTS = ["a small red circle to the left of a blue square", "a blue circle to the left of a small red square",
                  "a big green triangle in the top left", "a big green triangle in the bottom right",
                  "a yellow square above a small purple circle", "a white diamond below a cyan circle"]


FOLDER_PROMPTS = 8  # rows of the prompt grid of a model trained on a folder of images


def folder_prompts(folder: str | Path, count: int = FOLDER_PROMPTS) -> list[str]:
    """Prompts for a model trained on a folder of images: ``count`` of the folder's own captions, the shortest
    first, each one that says a word the ones before did not taking precedence (so that they differ)."""
    from minisd.data.image_folder import folder_captions
    from minisd.errors import DataError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"this model was trained on the folder {str(folder)!r}, which is not found here; its prompt "
                        f"grid shows the folder's own captions (run the command where you trained the model)")
    captions = list(dict.fromkeys(text for _, text in folder_captions(folder)))  # distinct, in the folder's order
    if not captions:
        raise DataError(f"{str(folder)!r} holds no captions to draw the prompt grid with")
    captions.sort(key=lambda text: len(text.split()))  # stable: the folder's order among equal lengths
    chosen, words = [], set()
    for text in captions:
        if len(chosen) < count and not set(text.lower().split()) <= words:
            chosen.append(text)
            words |= set(text.lower().split())
    return chosen + [text for text in captions if text not in chosen][:count - len(chosen)]


def _generator(pipe: TextToImagePipeline, seed: int) -> torch.Generator:
    return torch.Generator(pipe.device).manual_seed(seed)


def _show(ax, image: torch.Tensor) -> None:
    """One ``(C, H, W)`` image in [0, 1], grey or colour, without ticks."""
    ax.imshow(image.permute(1, 2, 0).squeeze(-1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


@torch.no_grad()
def noised_and_estimated(pipe: TextToImagePipeline, pixels: torch.Tensor, prompt: str, levels: int = 8,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the diffusion model sees and what it makes of it: one image ``pixels`` ``(1, C, H, W)`` in [0, 1],
    encoded, noised to z_t = alpha_t z + sigma_t eps (Luo (2022) eq. 69, in the latent space) at ``levels`` times t
    in (0, 1] by the model's own schedule, and the model's estimate of the clean latent from each, given ``prompt``.
    Returns ``t``, ``sigma`` ``(levels,)`` and the decoded noised and estimated images ``(levels, C, H, W)``."""
    model = pipe.model
    z = model.autoencoder.encode(pixels.to(pipe.device))
    t = torch.linspace(0, 1, levels + 1)[1:].to(pipe.device)
    alpha, sigma = model.denoiser.schedule.alpha_sigma(t)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(pipe.device)
    shape = (-1,) + (1,) * (z.dim() - 1)
    z_t = alpha.view(shape) * z + sigma.view(shape) * eps
    z0_estimate = model.denoiser(z_t, t, model.encode_prompts([prompt] * levels, allow_empty=True))
    decode = model.autoencoder.decode
    return t, sigma, decode(z_t).clamp(0, 1), decode(z0_estimate).clamp(0, 1)


def prompt_grid_figure(pipe: TextToImagePipeline, prompts: list[str], path: Path, *, per_prompt: int = 8,
                       seed: int = 0) -> Path:
    """One row of ``per_prompt`` samples per prompt (guidance: the model's), the prompt written beside it."""
    fig = Figure(figsize=(per_prompt * 0.7 + 3.2, len(prompts) * 0.72))
    axes = fig.subplots(len(prompts), 1, squeeze=False)[:, 0]
    for row, (ax, prompt) in enumerate(zip(axes, prompts)):
        images = pipe(prompt, num_images_per_prompt=per_prompt, generator=_generator(pipe, seed + row),
                      output_type="pt").images
        show_image_grid(ax, images, per_prompt)
        ax.set_ylabel(prompt, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"minisd generate, {pipe.name}: {pipe.model.sample_steps} steps, guidance "
                 f"{pipe.model.guidance_scale:g}, {pipe.model.sampler}", fontsize=9)
    return save_figure(fig, path)


def attention_figure(pipe: TextToImagePipeline, prompt: str, path: Path, *, seed: int = 0, columns: int = 6) -> Path:
    """How much each latent pixel attends to each word, at a few of the sampling steps (rows: tokens), next to
    the x0 estimate at the same steps (top row): where each word acts while the picture forms."""
    previews = []
    output = pipe(prompt, generator=_generator(pipe, seed), output_type="pt", return_attention=True,
                  callback=lambda info: previews.append(info["x0_preview"][0].cpu()))
    tokens = output.tokens[0]
    maps = output.attention_maps[:, 0, :len(tokens)]  # (steps, tokens, h, w)
    steps = torch.linspace(0, len(maps) - 1, columns).round().long().tolist()
    fig = Figure(figsize=(columns * 1.1 + 1.4, (len(tokens) + 1) * 1.1))
    axes = fig.subplots(len(tokens) + 1, columns, squeeze=False)
    for column, step in enumerate(steps):
        _show(axes[0, column], previews[step])
        axes[0, column].set_title(f"step {step + 1}", fontsize=8)
        for row, token in enumerate(tokens, start=1):
            ax = axes[row, column]
            ax.imshow(maps[step, row - 1].numpy(), cmap="magma", vmin=0, vmax=float(maps[:, 1:].max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if column == 0:
                ax.set_ylabel(token, rotation=0, ha="right", va="center", fontsize=9)
    axes[0, 0].set_ylabel("x0 estimate", rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"cross-attention to each token of {prompt!r} (averaged over heads and layers)", fontsize=9)
    return save_figure(fig, path)


def editing_figure(pipe: TextToImagePipeline, prompt: str, edit_prompt: str, path: Path, *, seed: int = 0) -> Path:
    """An image, image-to-image at three strengths with another prompt, and inpainting of its right half."""
    image = pipe(prompt, generator=_generator(pipe, seed), output_type="pt").images[:1]
    _, height, width = pipe.image_shape
    mask = torch.zeros(1, 1, height, width)
    mask[..., width // 2:] = 1
    panels = [(image[0], "the init image")]
    for strength in (0.3, 0.6, 0.9):
        edited = pipe(edit_prompt, image=image, strength=strength, generator=_generator(pipe, seed), output_type="pt")
        panels.append((edited.images[0], f"strength {strength}"))
    painted = pipe(edit_prompt, image=image, mask_image=mask, generator=_generator(pipe, seed), output_type="pt")
    panels.append((painted.images[0], "inpaint the right half"))
    fig = Figure(figsize=(len(panels) * 1.6, 2.0))
    for ax, (picture, title) in zip(fig.subplots(1, len(panels)), panels):
        _show(ax, picture)
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{prompt!r}, then image-to-image and inpainting towards {edit_prompt!r}", fontsize=8)
    return save_figure(fig, path)


def make_text_to_image_figures(pipe: TextToImagePipeline, out_dir: Path, *, seed: int = 0,
                               prompts: list[str] | None = None) -> dict[str, Path]:
    """The chapter's three figures, with prompts for the model's data (digits or shapes), or the ``prompts`` given
    (a model of a folder of images: :func:`folder_prompts`); the attention and editing figures use the first
    (and the second) of them."""
    if prompts:
        attention_prompt, edit = prompts[0], (prompts[0], prompts[1 % len(prompts)])
    elif pipe.image_shape[0] == 3:
        prompts = SHAPES_PROMPTS
        attention_prompt, edit = prompts[0], (prompts[0], "a small red circle to the left of a yellow triangle")
    else:
        prompts = DIGIT_PROMPTS
        attention_prompt, edit = "a thick handwritten digit 7", ("a handwritten digit 3", "a handwritten digit 8")
    return {"prompt_grid": prompt_grid_figure(pipe, prompts, out_dir / "prompt_grid.png", seed=seed),
            "attention": attention_figure(pipe, attention_prompt, out_dir / "attention.png", seed=seed),
            "editing": editing_figure(pipe, *edit, out_dir / "editing.png", seed=seed)}
