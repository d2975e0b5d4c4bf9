"""Text for text-to-image: prompts to token ids (:class:`Tokenizer`) and token ids to vectors (:class:`TextEncoder`);
:class:`LayoutDecoder`, a training aid that teaches those vectors where things are.

The trained text model, CLIP-style, is :class:`minisd.models.clip.ContrastiveTextImage`.
"""

from minisd.text.encoder import TextEncoder, TransformerBlock
from minisd.text.layout import LayoutDecoder
from minisd.text.tokenizer import Tokenizer

__all__ = ["Tokenizer", "TextEncoder", "TransformerBlock", "LayoutDecoder"]
