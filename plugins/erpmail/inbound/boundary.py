"""The stdlib's mail parser without a regular expression compiled per multipart boundary.

Replaces: ``email.feedparser`` compiles ``'(?P<sep>' + re.escape(separator) + TAIL`` for
every multipart boundary it meets. Boundaries are unique per mail, so ``re``'s cache never
hits, and each compile costs 0.17-0.28 ms. Without this, the parse of the benchmark's text
mix (half of it multipart) takes 0.44 instead of 0.33 ms of CPU per mail
(bench/README.md, import). How: a private copy of the stdlib module, run from its own source
on first use, in which ``re.compile`` of exactly that pattern returns a matcher that tests
the separator as a prefix and one precompiled tail (all the parser asks of it: ``match`` and
the groups "end" and "linesep"); every other pattern is compiled as before. The stdlib
module, and every other user of ``email``, is left untouched.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import types
from email import feedparser
from email.policy import Policy

BOUNDARY_HEAD = "(?P<sep>"
BOUNDARY_TAIL = ")(?P<end>--)?(?P<ws>[ \\t]*)(?P<linesep>\\r\\n|\\r|\\n)?$"
_BOUNDARY_REST = re.compile(BOUNDARY_TAIL[1:])
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


class BoundaryLine:
    """What ``re.compile`` of the feedparser's boundary pattern gives, as far as it is used."""

    __slots__ = ("separator", "length")

    def __init__(self, separator: str) -> None:
        self.separator, self.length = separator, len(separator)

    def match(self, line: str) -> re.Match | None:
        """The tail's match after the separator, or None when the line is no boundary."""
        if not line.startswith(self.separator):
            return None
        return _BOUNDARY_REST.match(line, self.length)


class BoundaryRe:
    """``re`` as the private feedparser sees it: the same module, but boundary lines
    uncompiled. Any other pattern, or one whose separator does not read back exactly, is
    compiled."""

    def __getattr__(self, name: str):
        return getattr(re, name)

    @staticmethod
    def compile(pattern, flags=0):
        """``re.compile``, but a ``BoundaryLine`` for the feedparser's boundary pattern."""
        if (
            flags == 0
            and isinstance(pattern, str)
            and pattern.startswith(BOUNDARY_HEAD)
            and pattern.endswith(BOUNDARY_TAIL)
        ):
            escaped = pattern[len(BOUNDARY_HEAD) : -len(BOUNDARY_TAIL)]
            separator = _UNESCAPE.sub(r"\1", escaped)
            if re.escape(separator) == escaped:
                return BoundaryLine(separator)
        return re.compile(pattern, flags)


@functools.cache
def _private_feedparser() -> types.ModuleType | None:
    """A copy of ``email.feedparser`` run from its source with ``BoundaryRe`` as its ``re``;
    None when the source is not there (then the stdlib's parser is used as it is)."""
    spec = importlib.util.find_spec("email.feedparser")
    source = spec.loader.get_source(spec.name) if spec and spec.loader else None
    if source is None:
        return None
    module = types.ModuleType(f"{__name__}._feedparser", feedparser.__doc__)
    module.__file__ = spec.origin
    exec(compile(source, spec.origin, "exec"), module.__dict__)  # noqa: S102 (the stdlib's own)
    module.__dict__["re"] = BoundaryRe()
    return module


def bytes_feed_parser(policy: Policy) -> feedparser.BytesFeedParser:
    """A ``BytesFeedParser`` with ``policy`` that matches boundary lines without compiling."""
    private = _private_feedparser()
    return (private.BytesFeedParser if private else feedparser.BytesFeedParser)(policy=policy)
