"""Author–year citations that tell papers apart: a local Sphinx extension of the book.

sphinxcontrib-bibtex's `author_year` reference style prints {cite:t}`song2021sde` as
"Song et al. [2021]" -- and prints song2021mle and song2021ddim the same way. This extension
gives such entries the letters of the author–year convention (natbib, APA):

* entries whose citation text is the same (the short author text the reference style prints,
  "Song et al.", and the same year) get the years 2021a, 2021b, 2021c, lettered in the order
  of the .bib file, which therefore decides which paper is "a";
* the bibliography (book/references.md) labels each entry with that same text, "[Song et al.,
  2021a]", and sorts the entries by it, so that a reader finds a citation's entry by its text.

It registers with pybtex, under the name `author_year_lettered`: a formatting style
(`bibtex_default_style: author_year_lettered` in _config.yml) built on pybtex's `plain`, with a
label style and a sorting style of that name. The letters are written into each entry's `year`
field when the builder starts (after sphinxcontrib-bibtex has read the .bib files), so that the
citations, the bibliography entries and their labels all show the same year; doing it again on a
cached environment gives the same letters.
"""
from __future__ import annotations

import re
from collections import defaultdict

import pybtex.plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.sorting import BaseSortingStyle

NAME = "author_year_lettered"
_YEAR = re.compile(r"(\d{4})[a-z]?$")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def short_author(entry) -> str:
    """The author text a citation of `entry` prints, as plain text ("Song et al.", "Song and
    Ermon", or the title when there is no author), from sphinxcontrib-bibtex's person style."""
    from sphinxcontrib.bibtex.style.referencing import PersonStyle

    person = PersonStyle()
    text = person.author_or_editor_or_title(full=False).format_data(
        {"entry": entry, "style": _PersonHolder(person)})
    return text.render_as("text")


class _PersonHolder:
    def __init__(self, person):
        self.person = person


def base_year(entry) -> str:
    """The entry's year without a letter ("2021" for "2021b"); '' without a year."""
    year = entry.fields.get("year", "")
    match = _YEAR.match(year)
    return match.group(1) if match else year


def letter_years(entries) -> dict[str, str]:
    """{key: year} for the entries (in .bib order): the year, with a letter a, b, c... where
    several entries share the short author text and the year, in the order given."""
    groups = defaultdict(list)
    for entry in entries:
        groups[(short_author(entry), base_year(entry))].append(entry)
    years = {}
    for (_, year), group in groups.items():
        for k, entry in enumerate(group):
            years[entry.key] = year + (_LETTERS[k] if len(group) > 1 and year else "")
    return years


class LabelStyle(BaseLabelStyle):
    """'Song et al., 2021a': the citation's text, as the bibliography's label."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            year = entry.fields.get("year", "")
            yield f"{short_author(entry)}, {year}" if year else short_author(entry)


class SortingStyle(BaseSortingStyle):
    """By the label's text: short author text (case-folded), then year with its letter."""

    def sorting_key(self, entry):
        return (short_author(entry).casefold(), base_year(entry),
                entry.fields.get("year", ""))


class FormattingStyle(PlainStyle):
    """pybtex's `plain` entries, labelled and sorted by author–year."""

    default_label_style = NAME
    default_sorting_style = NAME


def _register() -> None:
    for group, klass in (("pybtex.style.formatting", FormattingStyle),
                         ("pybtex.style.labels", LabelStyle),
                         ("pybtex.style.sorting", SortingStyle)):
        pybtex.plugin.register_plugin(group, NAME, klass, force=True)


def _letter_the_years(app) -> None:
    domain = app.env.get_domain("cite")
    entries = domain.bibdata.data.entries
    for key, year in letter_years(list(entries.values())).items():
        if year:
            entries[key].fields["year"] = year


def setup(app):
    _register()
    app.setup_extension("sphinxcontrib.bibtex")
    # after sphinxcontrib-bibtex's own builder-inited handler (priority 500) has read the .bib
    app.connect("builder-inited", _letter_the_years, priority=600)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
