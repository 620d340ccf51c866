"""Lesion insertion into real CT: every voxel outside the edit region kept exact. The command
(`insert`), its measurements (`checks`), the patch model's data (`patches`) and whole-slice insertion for
the augmentation arm (`whole_slice`).

May import: `difflung.core`, `difflung.data`, `difflung.labels`, `difflung.phantom`, `difflung.diffusion`,
`difflung.judging`.
"""
