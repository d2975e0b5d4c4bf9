"""Each chapter's figures: ``minisd figures CHAPTER`` writes them as PNG files (:mod:`minisd.figures.chapters`).

This module imports nothing heavy: ``minisd --help`` lists the chapters without loading torch.
"""

CHAPTERS = ("probability", "vae", "autoencoder", "latent-planes", "diffusion", "score", "text-to-image", "flow")
