"""Each chapter's figures: ``minisd figures CHAPTER`` writes them as PNG files."""
