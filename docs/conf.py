"""Configure the Sphinx build of the documentation: ``.venv-nox/bin/nox -s docs``.

Sphinx rather than MkDocs: MkDocs 1.x has had no release since 2024-08, and Sphinx's
``-W -n`` fails the build on every reference, link or toctree entry that does not resolve.
"""

from __future__ import annotations

import importlib.metadata
import sys

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
OTHER_PROJECTS = [*sorted(sys.stdlib_module_names), "celery", "prometheus_client", "pytest"]
nitpick_ignore_regex = [
    ("py:.*", rf"({'|'.join(OTHER_PROJECTS)})\..+"),
    # The same classes, named as the modules import them for type checking.
    ("py:class", "CollectorRegistry|Counter|Metric|Decimal|WSGIApplication|ASGIApplication"),
]
# The private Literal aliases of the accepted strings, which reference.md lists.
nitpick_ignore = [("py:class", "LoginOutcomeValue"), ("py:class", "OrderStatusValue")]
# Pygments' PromQL lexer refuses the colons of recording rule names, which are valid
# PromQL; such a block is still shown, highlighted in relaxed mode.
suppress_warnings = ["misc.highlighting_failure"]
