"""Training stage: third tower (CLIP-3Modal) and DRAFT on one shared trainer."""
