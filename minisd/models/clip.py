"""A CLIP-style text encoder: trained so that a caption's embedding points at its image's (Radford et al. 2021).

Two towers map into one ``embed_dim``-dimensional space, both outputs L2-normalised:

- images ``(B, C, H, W)`` in [0, 1] -> a small CNN (the classifier's conv stages) -> a linear layer;
- captions -> :class:`~minisd.text.Tokenizer` -> :class:`~minisd.text.TextEncoder` (one vector per
  token) -> masked mean -> a linear layer.

Training pulls each image towards its own caption and away from the batch's other captions, and
vice versa. What the text-to-image model keeps is the text tower's *per-token* output,
:meth:`ContrastiveTextImage.encode_text`, which its UNet cross-attends to: contrastive training
makes those vectors carry what the image shows. It does not make them say which word goes with which
object (a bag of words wins it); ``layout_weight > 0`` adds :class:`~minisd.text.LayoutDecoder`'s loss,
which does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minisd import batch_rows
from minisd.errors import CheckpointError, ConfigError
from minisd.models.base import Model
from minisd.nn.conv import conv_stage
from minisd.text import LayoutDecoder, TextEncoder, Tokenizer

TOKENIZER_FILE = "tokenizer.json"
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on 1 / temperature: beyond it training became unstable (Radford et al.)


class ContrastiveTextImage(Model):
    """A text tower and an image tower trained with CLIP's symmetric contrastive loss.

    The embedding table has ``vocab_size`` rows, a maximum for the tokenizer, so the model can be
    built (from a config or a checkpoint's ``config.json``) before its tokenizer exists; the
    tokenizer is learned by :meth:`prepare` or read by :meth:`load_extra_files`.
    """

    model_type = "clip"
    needs_captions = True  # batches carry "caption" (list[str]) beside "image"
    extra_file_names = (TOKENIZER_FILE,)

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), vocab_size: int = 1000,
                 max_length: int = 24, text_dim: int = 64, text_depth: int = 2, text_heads: int = 4,
                 embed_dim: int = 64, image_channels: list[int] = (32, 64), temperature_init: float = 0.07,
                 layout_weight: float = 0.0, layout_side: int = 8):
        super().__init__(image_shape=list(image_shape), vocab_size=vocab_size, max_length=max_length,
                         text_dim=text_dim, text_depth=text_depth, text_heads=text_heads, embed_dim=embed_dim,
                         image_channels=list(image_channels), temperature_init=temperature_init,
                         layout_weight=layout_weight, layout_side=layout_side)
        in_channels, side, _ = image_shape
        if side % 2 ** len(image_channels):
            raise ConfigError(f"image side {side} is not divisible by 2**{len(image_channels)}; "
                              "use fewer image_channels stages")
        if not 0 < temperature_init <= 1:
            raise ConfigError(f"temperature_init must lie in (0, 1], got {temperature_init}")
        if not (layout_weight >= 0 and math.isfinite(layout_weight)) or not 1 <= layout_side <= side:
            raise ConfigError(f"layout_weight must be a finite number >= 0 and layout_side lie in [1, {side}], got "
                              f"{layout_weight} and {layout_side}")
        widths = [in_channels, *image_channels]
        bottom_side = side // 2 ** len(image_channels)
        self.image_encoder = nn.Sequential(*(conv_stage(n_in, n_out) for n_in, n_out in zip(widths, widths[1:])),
                                           nn.Flatten(), nn.Linear(image_channels[-1] * bottom_side**2, embed_dim))
        self.text_encoder = TextEncoder(vocab_size, max_length, dim=text_dim, depth=text_depth, num_heads=text_heads)
        self.text_projection = nn.Linear(text_dim, embed_dim)
        # Learned in log space, so it stays positive and its steps are relative; CLIP starts at 1 / 0.07.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature_init)))
        # Only a training aid (see minisd.text.layout): without it, a bag of words wins the contrastive loss.
        self.layout_decoder = LayoutDecoder(text_dim, layout_side, in_channels, num_heads=text_heads) \
            if layout_weight > 0 else None
        self.tokenizer: Tokenizer | None = None

    # --- the tokenizer, learned from the data and stored beside the weights ----------

    def prepare(self, train_set: Any) -> None:
        """Learn the tokenizer from ``train_set.caption_vocabulary()`` (captions covering every word), if none yet."""
        if self.tokenizer is None:
            self.tokenizer = Tokenizer.train(train_set.caption_vocabulary(), max_length=self.hparams["max_length"],
                                             vocab_size=self.hparams["vocab_size"])

    def extra_files(self) -> dict[str, bytes]:
        """The files a checkpoint keeps beside the weights: ``{"tokenizer.json": bytes}``."""
        return {TOKENIZER_FILE: self._require_tokenizer().to_json().encode("utf-8")}

    def load_extra_files(self, files: dict[str, bytes]) -> None:
        """Set the tokenizer from a checkpoint's files (those :meth:`extra_files` wrote)."""
        if TOKENIZER_FILE not in files:
            raise CheckpointError(f"the checkpoint has no {TOKENIZER_FILE}, which a clip model needs; "
                                  "save it again with this version of minisd")
        try:
            tokenizer = Tokenizer.from_json(files[TOKENIZER_FILE].decode("utf-8"))
        except UnicodeDecodeError:
            raise CheckpointError(f"{TOKENIZER_FILE} is not UTF-8 text; the checkpoint is damaged") from None
        if tokenizer.vocab_size > self.hparams["vocab_size"] or tokenizer.max_length != self.hparams["max_length"]:
            raise CheckpointError(f"{TOKENIZER_FILE} ({tokenizer.vocab_size} words, max_length "
                                  f"{tokenizer.max_length}) does not fit the model (vocab_size "
                                  f"{self.hparams['vocab_size']}, max_length {self.hparams['max_length']})")
        self.tokenizer = tokenizer

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ConfigError("this clip model has no tokenizer yet; call prepare(train_set) before training, "
                              "or load a trained one with minisd.load")
        return self.tokenizer

    # --- the two towers ---------------------------------------------------------------

    def _tokens(self, prompts: list[str], allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompts -> ids ``(B, L)``, per-token embeddings ``(B, L, text_dim)``, mask ``(B, L)``."""
        ids, mask = self._require_tokenizer()(prompts, allow_empty=allow_empty)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return ids, self.text_encoder(ids, mask), mask

    def encode_text(self, prompts: list[str], *, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token text embeddings ``(B, L, text_dim)`` and their mask ``(B, L)`` (True = real token).

        This is the context a text-to-image UNet cross-attends to (with the mask as its ``context_mask``).
        ``allow_empty``: "" encodes as the start token alone, the unconditional branch's context
        (conditioning dropout, classifier-free guidance); otherwise an empty prompt is a ConfigError.
        """
        _, tokens, mask = self._tokens(prompts, allow_empty)
        return tokens, mask

    def _project_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(TextEncoder.pooled(tokens, mask)), dim=-1)

    def text_embedding(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> unit-length embeddings ``(B, embed_dim)`` in the space shared with images."""
        return self._project_text(*self.encode_text(prompts))

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] -> unit-length embeddings ``(B, embed_dim)``."""
        # Centred pixels, as in the classifier: the first ReLUs start half open whatever the image.
        return F.normalize(self.image_encoder(2 * images - 1), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        """1 / temperature, capped at 100 as in CLIP: the factor turning cosine similarities into logits."""
        return self.log_logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # --- training and evaluation ----------------------------------------------------

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """CLIP's symmetric cross-entropy over the ``(B, B)`` image-caption similarities (Radford et al. 2021).

        Row i of ``logits`` scores image i against every caption of the batch, column j caption j
        against every image; each row's target is its own pair. Templated captions repeat ("a
        handwritten 7" m times in a batch): identical captions get identical embeddings, so their
        logits tie and the loss cannot fall below the batch's mean log m. That floor is no fault,
        and spreading the targets over the repeats would change nothing: with tied logits the hard
        and the spread targets give the same value and gradient. Accuracy, though, counts any
        image whose caption has the same tokens as a right answer.

        With ``layout_weight > 0`` the loss adds ``layout_weight`` times the layout decoder's squared error
        (:class:`~minisd.text.LayoutDecoder`): the tokens must also say where each thing is, and what it is.
        """
        ids, tokens, mask = self._tokens(list(batch["caption"]))
        images, captions = self.image_embedding(batch["image"]), self._project_text(tokens, mask)
        # Under torchrun each process scores its own images and captions against the whole batch's, so that the
        # averaged gradients are one process's (see minisd.batch_rows.gather); with one process, all are its own.
        all_images, first = batch_rows.gather(images)
        all_captions, _ = batch_rows.gather(captions)
        all_ids, _ = batch_rows.gather(ids)
        image_logits = self.logit_scale * images @ all_captions.T      # (B, B_all): image i against every caption
        caption_logits = self.logit_scale * captions @ all_images.T    # (B, B_all): caption j against every image
        targets = first + torch.arange(len(images), device=images.device)
        loss = (F.cross_entropy(image_logits, targets) + F.cross_entropy(caption_logits, targets)) / 2
        # In-batch caption-to-image accuracy: the best-scoring image carries the caption's content.
        same_caption = (ids[:, None, :] == all_ids[None, :, :]).all(dim=-1)  # (B, B_all)
        accuracy = same_caption.gather(1, caption_logits.argmax(dim=1, keepdim=True)).double().mean()
        metrics = {"accuracy": accuracy.item(), "temperature": 1 / self.logit_scale.item()}
        if self.layout_decoder is not None:
            layout_error = self.layout_decoder.loss(tokens, mask, batch["image"])
            loss = loss + self.hparams["layout_weight"] * layout_error
            metrics["layout_mse"] = layout_error.item()
        return loss, {"loss": loss.item(), **metrics}
