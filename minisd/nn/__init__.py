"""Building blocks with no probability in them."""

from minisd.nn.attention import MultiHeadAttention, SpatialAttention, zero_init
from minisd.nn.codec import image_decoder, image_encoder
from minisd.nn.conv import ConvDecoder, ConvEncoder
from minisd.nn.embeddings import TimeEmbedding, sinusoidal_embedding
from minisd.nn.mlp import mlp
from minisd.nn.unet import UNet

__all__ = ["mlp", "ConvEncoder", "ConvDecoder", "image_encoder", "image_decoder", "UNet", "TimeEmbedding",
           "sinusoidal_embedding", "MultiHeadAttention", "SpatialAttention", "zero_init"]
