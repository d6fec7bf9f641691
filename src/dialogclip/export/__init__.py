"""Stage ``export``: what the pipeline makes usable outside it (the enriched dataset, shareable
as a Hugging Face dataset folder)."""
