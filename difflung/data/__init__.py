"""Data in and out: the dataset artifact (`dataset`), CT reading and writing (`ctio`), turning a user's CT into
a dataset (`prepare`, `classmap`, the classical lung segmentation `ct_anatomy`), the real CT we can reach
offline (`realdata`, `realct`), the phantom cohort as a dataset (`phantom_dataset`), new masks for rare classes
(`masksynth`) and the nnU-Net export (`nnunet`).

May import: `difflung.core`, `difflung.labels`, `difflung.progress`, `difflung.phantom` (which takes only the
`Volume` type from here), and for chapter 1's measurements the leaves `difflung.judging.instruments` (HU
signatures), `difflung.diffusion.ablation` (CBMAT's class frequencies) and `difflung.plots` (a percentage format).
"""
