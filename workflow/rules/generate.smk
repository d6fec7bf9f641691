# Stage: generate (placeholder until its rules land).


def get_generate_outputs():
    return []
