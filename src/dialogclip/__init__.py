"""DialogCLIP: CC3M enriched with vision-language dialogue, and CLIP variants trained on it."""

__version__ = "0.1.0"
