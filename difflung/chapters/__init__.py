"""One module per book chapter: the functions its notebook calls, one per section. Chapter modules only choose
models, tables and figures; loading, sampling and scoring live in `difflung.generators` and `difflung.judging.scoring`,
artifact paths in `difflung.core.runs`. No chapter imports another.

A chapter is its notebook's only door to the library: `notebooks/NN_*.py` imports its chapter module, `plots` and
`core.progress`, nothing else, and the values its prose quotes come from the chapter (`*_facts`, glued by
`scope.glue_facts`). Shared by the chapters, and importing none: `common` (the one `evaluate` and `check` of
chapters 2-4), `criteria_tables` (tables and sentences about the convergence criteria) and `scope` (the "can and
cannot show" box). `tests/test_chapters.py` holds both rules.
"""
