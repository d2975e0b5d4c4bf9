"""Building blocks with no probability in them."""

from minisd.nn.codec import image_decoder, image_encoder
from minisd.nn.conv import ConvDecoder, ConvEncoder
from minisd.nn.mlp import mlp

__all__ = ["mlp", "ConvEncoder", "ConvDecoder", "image_encoder", "image_decoder"]
