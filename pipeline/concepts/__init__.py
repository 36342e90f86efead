"""Concept explanations (XNN and the NMF baseline): features of a frozen layer, the per-class
models, their training steps, and what the concept methods share. No Prefect inside."""
