"""Floor 6: one module per ``dvc.yaml`` stage: prepare, targets, train, predict, postprocess, tune,
evaluate, submit, score. Nothing below this floor imports a stage.

May import: floors 0-5.
"""
