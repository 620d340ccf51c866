"""Running the book: profiles (`profiles`), the papermill pipeline (`pipeline`), the archive of a finished
run's numbers in `reference/<profile>/` (`archive`) and the checks of the built book (`bookcheck`).

May import: `difflung.core` and `difflung.judging` (to read a run's instruments); never a chapter.
"""
