"""One module per book chapter: the functions its notebook calls, one per section. Chapter modules only choose
models, tables and figures; loading, sampling and scoring live in `difflung.generators` and `difflung.judging.scoring`,
artifact paths in `difflung.core.runs`. No chapter imports another.
"""
