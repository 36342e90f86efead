"""Training fine-grained classifiers (Sun et al., AAAI 2020): a backbone whose pooling and
classifier become a 1x1 convolution to class-specific maps, the diversification block on those
maps during training, and the gradient-boosting cross-entropy. No Prefect, no files: the loop
hands checkpoints to its caller (pipeline/training/run.py writes them)."""
