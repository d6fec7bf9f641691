# Stage: evaluate (placeholder until its rules land).


def get_evaluate_outputs():
    return []
