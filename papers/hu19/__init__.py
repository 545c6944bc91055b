"""Hu et al. 2019, Learning Data Manipulation for Augmentation and Weighting (NeurIPS)."""
