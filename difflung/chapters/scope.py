"""The box each chapter ends with: "What this run can and cannot show".

A chapter collects facts about its own run (which instruments passed their floors, which classes are not
measurable at this image size and why, how many seeds and test patients carry the statistics, whether the main
model met its convergence criteria) and renders them here, so the reader never has to infer from a number whether
it could have told anything. The box is HTML (an admonition in the book's theme), so it renders the same in
Jupyter and in the built book; `difflung.run.bookcheck` requires it on every chapter page.

The numbers a page's prose quotes come the same way, from the chapter's code: `glue_facts` glues them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field

TITLE = "What this run can and cannot show"


@dataclass
class Scope:
    """Facts about one chapter's run.

    Args:
        profile: the run's profile name.
        can: statements the run's numbers support (each a sentence).
        cannot: statements it cannot support, each with its reason.
        facts: short "name: value" facts (seeds, test patients, image size), shown first.
    """
    profile: str
    can: list[str] = field(default_factory=list)
    cannot: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def html(self) -> str:
        kind = "warning" if self.cannot else "note"
        parts = [f'<div class="admonition {kind} difflung-scope"><p class="admonition-title">{TITLE}</p>']
        facts = "; ".join(f"{html.escape(k)}: <b>{html.escape(str(v))}</b>" for k, v in self.facts.items())
        parts.append(f"<p>Profile <b>{html.escape(self.profile)}</b>{'; ' + facts if facts else ''}.</p>")
        for head, items in (("Can show", self.can), ("Cannot show", self.cannot)):
            if items:
                lis = "".join(f"<li>{html.escape(s)}</li>" for s in items)
                parts.append(f"<p><b>{head}</b></p><ul>{lis}</ul>")
        parts.append("</div>")
        return "".join(parts)

    def _repr_html_(self) -> str:  # a notebook cell that ends with a Scope shows the box
        return self.html()


SMOKE_NOTE = ("the smoke profile is sized to check that the pipeline runs: its models are far from converged and its "
              "numbers do not test the paper")


def smoke_caveat(profile: str) -> list[str]:
    """The line every smoke-built chapter adds to its "cannot show" list."""
    return [f"Any claim of the paper: {SMOKE_NOTE}."] if profile == "smoke" else []


def glue_facts(facts: dict) -> None:
    """Glue each fact for the page's prose (`myst_nb.glue`, not displayed): a string as Markdown (quote it with
    `{glue:md}`), a number as itself (`{glue:text}`, with a format spec where the prose wants one)."""
    from IPython.display import Markdown
    from myst_nb import glue

    for key, value in facts.items():
        glue(key, Markdown(value) if isinstance(value, str) else value, display=False)
