"""Floor 5: training a network: augmentation, data sets, losses, the loop, checkpoints, several
processes, and fine-tuning on a user's annotated images.

May import: floors 0-4.
"""
