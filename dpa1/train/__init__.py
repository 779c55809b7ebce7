"""Training utilities: learning-rate schedule, loss, learning-curve output and the training loop."""
