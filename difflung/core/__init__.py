"""Foundations every other package stands on: provenance and atomic writes (`provenance`), training-state
checkpoints (`checkpoint`), the resumable run folder and batch order shared by every trained model
(`training`), the tidy `metrics.csv` (`metrics_csv`), artifact paths under `runs/<profile>/` (`runs`) and
parallel jobs (`parallel`). Progress bars are one floor down, in `difflung.progress` (notebooks import it too).

May import: `difflung.labels` and third-party packages only.
"""
