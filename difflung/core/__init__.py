"""Foundations every other package stands on: provenance and atomic writes (`provenance`), training-state
checkpoints (`checkpoint`), the resumable run folder and batch order shared by every trained model
(`training`), the tidy `metrics.csv` (`metrics_csv`), artifact paths under `runs/<profile>/` (`runs`),
parallel jobs (`parallel`) and quiet progress bars (`progress`).

May import: `difflung.labels` and third-party packages only.
"""
