"""The report stage: the thesis' tables with our numbers beside them, plots, dialogue quality.

Reads the files the other stages wrote (evaluation metrics, ingestion and dialogue summaries,
training metrics) and ``resources/thesis/numbers.yaml``; imports only ``dialogclip.core`` and
``dialogclip.models``.
"""
