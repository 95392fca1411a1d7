"""Training machinery: run configs, data sets and readers, the training loop, checkpoints and run
directories, distributed helpers, the noisy-classifier trainer and export of shipped models."""
