"""Learning to Augment Influential Data (ICLR 2019 submission): influence functions of Sec. 3 (influence.py)."""
