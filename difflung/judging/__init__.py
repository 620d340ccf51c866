"""Everything that judges, in one place: image metrics (`metrics`: PSNR/SSIM, per-class Dice), a generator's
cost (`cost`: parameters, GFLOPs, seconds per image), realism instruments (`realism`: HU Wasserstein, texture,
air, the real-vs-generated classifier and its positive controls, memorisation), distances in the judge's feature
space (`features`: Fréchet distance, precision, recall, density, coverage), the instruments' floors, bounds and HU
signatures (`instruments`),
the judge segmenter and `generate_and_score` (`scoring`), the convergence criteria (`criteria`: one rule for the
chapters and the convergence benchmark), statistics and verdicts (`stats`), the poster's reported numbers
(`reported`) and its claims judged against our runs (`claims`).

May import: `difflung.core`, `difflung.data`, `difflung.labels`, `difflung.diffusion` (pixel <-> HU, class
removal), `difflung.segmentation`. Never `difflung.plots` or a chapter: tables and sentences about criteria
belong to the chapters.
"""
