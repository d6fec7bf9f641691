"""The miniature world: seeded scenes, their texts in the pipeline's formats, and the world's
really trained models (docs/world.md). Imports ``dialogclip.core`` and ``dialogclip.models``,
never a stage."""
