# Stage: ingest (placeholder until its rules land).


def get_ingest_outputs():
    return []
