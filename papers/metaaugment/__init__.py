"""Zhou et al. 2021, MetaAugment: Sample-Aware Data Augmentation Policy Learning (AAAI)."""
