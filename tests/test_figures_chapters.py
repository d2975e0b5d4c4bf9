"""Tests for the chapter figures that compare models: chapter 2's latent planes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from minisd.data import ImageDataset
from minisd.figures.vae import empty_fraction, make_latent_planes_figure
from minisd.models import VAE, Autoencoder

TINY = dict(image_shape=(1, 8, 8), latent_dim=2, hidden=[16])


def tiny_dataset(count: int = 40) -> ImageDataset:
    """``count`` random 8 x 8 images in two classes."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((count, 1, 8, 8), generator=generator)
    return ImageDataset(images, torch.arange(count) % 2, ["a", "b"], name="tiny", split="test")


def test_latent_planes_figure_draws_an_autoencoder_beside_a_vae(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = make_latent_planes_figure(Autoencoder(**TINY), VAE(**TINY), tiny_dataset(), tmp_path)
    assert paths == {"latent_planes": tmp_path / "latent_planes.png"}
    assert paths["latent_planes"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latent_planes_figure_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "latent_planes.png").write_bytes(b"keep")
    with pytest.raises(Exception, match="latent_planes.png"):
        make_latent_planes_figure(Autoencoder(**TINY), VAE(**TINY), tiny_dataset(), tmp_path)
    assert (tmp_path / "latent_planes.png").read_bytes() == b"keep"


def test_latent_planes_figure_needs_a_two_dimensional_latent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-d latent"):
        make_latent_planes_figure(Autoencoder(**{**TINY, "latent_dim": 3}), VAE(**TINY), tiny_dataset(), tmp_path)


def test_empty_fraction_is_zero_for_a_filled_square_and_large_for_two_islands() -> None:
    grid = torch.stack(torch.meshgrid(torch.linspace(0, 1, 200), torch.linspace(0, 1, 200), indexing="xy"), -1)
    assert empty_fraction(grid.reshape(-1, 2), bins=10) == 0.0
    generator = torch.Generator().manual_seed(0)
    islands = torch.cat([torch.randn(2000, 2, generator=generator) * 0.05 + centre
                         for centre in (torch.tensor([0.0, 0.0]), torch.tensor([5.0, 5.0]))])
    assert empty_fraction(islands, bins=10) > 0.8
