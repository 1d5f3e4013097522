"""Datasets, prompts, the synthetic shapes generator and the embedded tiny model builder."""
