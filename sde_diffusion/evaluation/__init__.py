"""Evaluation: sampler comparison, sample-quality metrics and the digits feature network,
likelihood tables, reports and plots, and the demo."""
