"""Segmentation augmentation (chapter 5): the arms (reference, oversampling, synthetic sets from each
generator, lesion insertion), their training data, and the segmenters trained on them across seeds.

May import: every library package below the chapters (`core`, `data`, `diffusion`, `baselines`,
`segmentation`, `generators`, `judging`, `insertion`).
"""
