"""The student of consistency distillation: a text-to-image model whose loss asks a guided teacher for its next ODE
point (:func:`minisd.diffusion.consistency.consistency_distillation_loss`).

It is a :class:`~minisd.models.latent_diffusion.LatentDiffusion` in every other way, and is saved as one: the
teacher is held outside the student's modules, so a checkpoint holds the student alone and loads as an ordinary
model.
"""

from __future__ import annotations

from typing import Any

import torch

from minisd.diffusion.consistency import consistency_distillation_loss, consistency_grid
from minisd.diffusion.guidance import ClassifierFreeGuidance
from minisd.models.latent_diffusion import LatentDiffusion


class ConsistencyStudent(LatentDiffusion):
    """A :class:`LatentDiffusion` trained by consistency distillation from ``teacher`` (another LatentDiffusion that
    reads the same text encoder's embeddings) guided at ``guidance_scale``, on a teacher grid of ``steps`` ODE steps."""

    def distil_from(self, teacher: LatentDiffusion, guidance_scale: float, steps: int) -> ConsistencyStudent:
        # Kept out of the module tree (no submodule registered), so that neither the optimiser nor a checkpoint
        # sees the teacher.
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.__dict__["teacher_guidance"], self.__dict__["grid"] = guidance_scale, consistency_grid(teacher.denoiser,
                                                                                                      steps)
        return self

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        latents = self.latents(batch)
        if self.teacher.device != latents.device:  # not a submodule, so the training loop's .to() did not move it
            self.teacher.to(latents.device)
        cond = self.encode_prompts(batch["caption"], allow_empty=True)
        teacher = ClassifierFreeGuidance(self.teacher.denoiser, self.teacher_guidance,
                                         self.teacher.encode_prompts([""], allow_empty=True))
        loss = consistency_distillation_loss(self.denoiser, teacher, latents, self.grid, cond=cond).mean()
        return loss, {"loss": loss.item()}
