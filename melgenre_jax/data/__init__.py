"""The data layer: songs and audio in, cached segments and batches out."""
