"""Configure the Sphinx build of the documentation: ``.venv-nox/bin/nox -s docs``.

Sphinx rather than MkDocs: MkDocs 1.x has had no release since 2024-08, and Sphinx's
``-W -n`` fails the build on every reference, link or toctree entry that does not resolve.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sphinx.application import Sphinx

DOCS = Path(__file__).resolve().parent

project = "veza-business-metrics"
author = "Veza platform team"
copyright = f"2026, {author}"  # noqa: A001  Sphinx reads this name
release = importlib.metadata.version(project)

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
html_theme = "furo"
html_title = project

# Links such as [the API](reference.md#api) need anchors on the headings they point to.
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Without network there is no intersphinx: references into the standard library and
# other projects stay unlinked, while every reference into this package must resolve.
OTHER_PROJECTS = [*sorted(sys.stdlib_module_names), "prometheus_client", "pytest"]
nitpick_ignore_regex = [
    ("py:.*", rf"({'|'.join(OTHER_PROJECTS)})\..+"),
    # The same classes, named as the modules import them for type checking.
    ("py:class", "CollectorRegistry|Counter|Metric|Decimal"),
]
# The private Literal aliases of the accepted strings, which reference.md lists.
nitpick_ignore = [("py:class", "LoginOutcomeValue"), ("py:class", "OrderStatusValue")]

# For the integrator: alerting.md and runbooks/ come from another branch (issue 9). Once
# they are merged, delete this tuple and the source-read hook below.
PAGES_FROM_ANOTHER_BRANCH = ("alerting", "runbooks/index")


def _drop_pages_not_merged_yet(_app: Sphinx, docname: str, source: list[str]) -> None:
    """Remove from index.md's toctree the pages of another branch that are not here yet."""
    if docname == "index":
        for page in PAGES_FROM_ANOTHER_BRANCH:
            if not (DOCS / f"{page}.md").exists():
                source[0] = source[0].replace(f"\n{page}\n", "\n")


def setup(app: Sphinx) -> None:
    """Connect the hook above."""
    app.connect("source-read", _drop_pages_not_merged_yet)
