"""A small engine for anchored, reversible changes to someone else's source tree.

A change is either an insertion, a block of whole lines of our own placed before or after a
line found by regular expressions (identifiers and short patterns, never line numbers), or an
edit of that one line (a pattern in it replaced, e.g. our scheme added to a CASE label). Both
are wrapped in two marker comments; an edit also keeps the line as it was::

    ! mlcu-patch begin driver-case            ! mlcu-patch begin ppt-case
    ...our lines...                           ! mlcu-patch was:   CASE (KFETASCHEME, MSKFSCHEME)
    ! mlcu-patch end driver-case                 CASE (KFETASCHEME, MSKFSCHEME, MLCUSCHEME)
                                              ! mlcu-patch end ppt-case

Removing the marked blocks (and putting back the lines kept in them) gives back the original
bytes exactly. Applying works on the text with all our blocks removed, so applying twice
changes nothing and applying with other settings replaces our blocks in place. All anchors are
located before any file is written: a missing anchor leaves the tree untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MARK = "mlcu-patch"
_MARKER = re.compile(r"^\s*(?:!|#)\s*" + MARK + r" (begin|end) (\S+)\s*$")
_WAS = re.compile(r"^(?:!|#) " + MARK + r" was:(.*?)(\r?\n)?$", re.DOTALL)

# Comment leader and line-continuation character by kind of file.
KINDS = {
    "fortran": ("!", "&"),
    "make": ("#", "\\"),
    "registry": ("#", "\\"),
    "cmake": ("#", None),
}


class PatchError(Exception):
    """A refusal: the tree is not one the patches can be applied to (nothing was written)."""


@dataclass(frozen=True)
class Anchor:
    """Where a block goes.

    ``patterns`` are searched in order, each after the line the previous one matched; the first
    must match exactly one line of the scope. The block goes ``before`` or ``after`` the line
    matched by the last pattern (after a continued statement, it goes after its last line).
    ``scope`` is a pair of patterns bounding the region searched (for example one subroutine).
    With ``where = "edit"`` the matched line itself is changed (``Insertion.edit``).
    """

    patterns: tuple[str, ...]
    where: str = "before"
    scope: tuple[str, str] | None = None

    def describe(self) -> str:
        text = " then ".join(repr(p) for p in self.patterns)
        if self.scope:
            text += f" within {self.scope[0]!r}..{self.scope[1]!r}"
        return f"{self.where} {text}"


@dataclass(frozen=True)
class Insertion:
    name: str          # block name, unique in its file
    path: str          # file, relative to the tree root
    kind: str          # a key of KINDS
    anchor: Anchor
    text: str          # our lines, without markers; each ends with a newline
    # For an edit (anchor.where == "edit"): (pattern, replacement) for re.sub on the anchored
    # line; the pattern must occur in it exactly once.
    edit: tuple[str, str] | None = None


@dataclass
class Located:
    insertion: Insertion
    line: int | None = None        # 0-based index of the line the block goes before (an
                                   # edit: of the line it replaces)
    edited: str = ""               # an edit: the new line, without its line end
    anchor_line: str = ""          # the line matched by the last pattern, and its index
    anchor_index: int = -1
    first_line: str = ""           # the line matched by the first pattern, and its index
    first_index: int = -1
    error: str = ""

    @property
    def found(self) -> bool:
        return self.line is not None


def _flags(kind: str) -> int:
    return re.IGNORECASE if kind == "fortran" else 0


def read_lines(path: Path) -> list[str]:
    """The lines of a file with their line ends (latin-1: every byte round-trips)."""
    with open(path, encoding="latin-1", newline="") as f:
        return f.read().splitlines(keepends=True)


def sha256_text(lines: list[str]) -> str:
    return hashlib.sha256("".join(lines).encode("latin-1")).hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strip_blocks(lines: list[str], path: str = "") -> tuple[list[str], list[str]]:
    """The lines without our marked blocks (an edited line as it was), and the names of the
    blocks removed."""
    out, names, open_name, was = [], [], None, None
    for number, line in enumerate(lines, 1):
        m = _MARKER.match(line)
        if open_name is None:
            if m and m.group(1) == "begin":
                open_name, was = m.group(2), None
            elif m:
                raise PatchError(f"{path}:{number}: '{MARK} end' without a begin marker")
            else:
                out.append(line)
        elif m:
            if m.group(1) == "begin" or m.group(2) != open_name:
                raise PatchError(f"{path}:{number}: damaged {MARK} block {open_name!r}")
            if was is not None:
                out.append(was)
            names.append(open_name)
            open_name = None
        elif _WAS.match(line):
            if was is not None:
                raise PatchError(f"{path}:{number}: damaged {MARK} block {open_name!r}")
            kept = _WAS.match(line)
            was = kept.group(1) + (kept.group(2) or "")
    if open_name is not None:
        raise PatchError(f"{path}: {MARK} block {open_name!r} has no end marker")
    return out, names


def _code(line: str, kind: str) -> str:
    """The line without its end-of-line comment and trailing blanks (approximate, for
    continuation tests only)."""
    text = line.rstrip("\r\n")
    leader = KINDS[kind][0]
    if kind == "fortran" and "!" in text:
        text = text.split("!", 1)[0]
    elif kind != "fortran" and text.lstrip().startswith(leader):
        text = ""
    return text.rstrip()


def _continues(line: str, kind: str) -> bool:
    cont = KINDS[kind][1]
    return bool(cont) and _code(line, kind).endswith(cont)


def locate(lines: list[str], ins: Insertion) -> Located:
    """Finds where ``ins`` goes in ``lines`` (a text without our blocks)."""
    flags = _flags(ins.kind)
    anchor = ins.anchor
    lo, hi = 0, len(lines)
    if anchor.scope:
        start_re, end_re = (re.compile(p, flags) for p in anchor.scope)
        starts = [i for i, line in enumerate(lines) if start_re.search(line)]
        if not starts:
            return Located(ins, error=f"scope start {anchor.scope[0]!r} not found")
        ends = [i for i in range(starts[0] + 1, len(lines)) if end_re.search(lines[i])]
        if not ends:
            return Located(ins, error=f"scope end {anchor.scope[1]!r} not found")
        lo, hi = starts[0], ends[0] + 1
    first = re.compile(anchor.patterns[0], flags)
    hits = [i for i in range(lo, hi) if first.search(lines[i])]
    if not hits:
        return Located(ins, error=f"{anchor.patterns[0]!r} not found")
    if len(hits) > 1:
        return Located(ins, error=f"{anchor.patterns[0]!r} found {len(hits)} times "
                                  f"(lines {', '.join(str(h + 1) for h in hits[:5])})")
    at = first_at = hits[0]
    for pattern in anchor.patterns[1:]:
        rx = re.compile(pattern, flags)
        nxt = [i for i in range(at + 1, hi) if rx.search(lines[i])]
        if not nxt:
            return Located(ins, error=f"{pattern!r} not found after line {at + 1}")
        at = nxt[0]
    anchor_line, anchor_at = lines[at].rstrip("\r\n"), at
    if anchor.where == "after":
        while at < hi - 1 and _continues(lines[at], ins.kind):
            at += 1
        position = at + 1
    elif anchor.where == "edit":
        text = lines[at].rstrip("\r\n")
        pattern, replacement = ins.edit
        hits = len(re.findall(pattern, text, flags))
        if hits != 1:
            return Located(ins, error=f"line {at + 1} holds the edited pattern {pattern!r} "
                                      f"{hits} times, not once")
        return Located(ins, line=at, edited=re.sub(pattern, replacement, text, flags=flags),
                       anchor_line=anchor_line.strip(), anchor_index=anchor_at,
                       first_line=lines[first_at].strip(), first_index=first_at)
    elif anchor.where == "before":
        if at > 0 and _continues(lines[at - 1], ins.kind):
            return Located(ins, error=f"line {at + 1} continues a statement; refusing to "
                                      "insert inside it")
        position = at
    else:
        raise ValueError(f"anchor position {anchor.where!r}")
    return Located(ins, line=position, anchor_line=anchor_line.strip(), anchor_index=anchor_at,
                   first_line=lines[first_at].strip(), first_index=first_at)


def newline_of(lines: list[str]) -> str:
    for line in lines:
        if line.endswith("\r\n"):
            return "\r\n"
        if line.endswith("\n"):
            return "\n"
    return "\n"


def block_lines(loc: Located, newline: str, original: str = "") -> list[str]:
    """The marked block of an insertion, or of an edit of the line ``original``."""
    ins = loc.insertion
    leader = KINDS[ins.kind][0]
    if ins.anchor.where == "edit":
        body = [f"{leader} {MARK} was:{original.rstrip(chr(13) + chr(10))}{newline}",
                loc.edited + newline]
    else:
        body = [line + newline for line in ins.text.splitlines()]
    return ([f"{leader} {MARK} begin {ins.name}{newline}"] + body
            + [f"{leader} {MARK} end {ins.name}{newline}"])


def render(base: list[str], located: list[Located]) -> list[str]:
    """``base`` with the blocks inserted and the edited lines replaced (all must be
    located)."""
    newline = newline_of(base)
    inserts = [loc for loc in located if loc.insertion.anchor.where != "edit"]
    edits = {loc.line: loc for loc in located if loc.insertion.anchor.where == "edit"}
    if len(edits) < len(located) - len(inserts):
        raise PatchError(f"{located[0].insertion.path}: two edits of one line")
    if base and not base[-1].endswith(("\n", "\r")):
        if any(loc.line == len(base) for loc in inserts) or len(base) - 1 in edits:
            raise PatchError(f"{located[0].insertion.path}: cannot change or append after a "
                             "last line without a line end")
    by_line: dict[int, list[Located]] = {}
    for loc in inserts:
        by_line.setdefault(loc.line, []).append(loc)
    out: list[str] = []
    for i in range(len(base) + 1):
        for loc in by_line.get(i, []):
            out.extend(block_lines(loc, newline))
        if i in edits:
            out.extend(block_lines(edits[i], newline, base[i]))
        elif i < len(base):
            out.append(base[i])
    return out


def write_atomic(path: Path, text: str, like: Path | None = None) -> None:
    """Writes ``text`` (latin-1) through a temporary file renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="latin-1", newline="") as f:
            f.write(text)
        mode_src = like if like is not None and like.exists() else None
        if mode_src is not None:
            os.chmod(tmp, mode_src.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class FilePlan:
    """What applying does to one file."""

    path: str
    original_sha256: str                   # of the text without our blocks
    current: list[str]
    new: list[str]
    located: list[Located] = field(default_factory=list)
    had_blocks: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.current != self.new


def plan_file(root: Path, path: str, insertions: list[Insertion]) -> FilePlan:
    lines = read_lines(root / path)
    base, had = strip_blocks(lines, path)
    located = [locate(base, ins) for ins in insertions]
    missing = [loc for loc in located if not loc.found]
    new = render(base, located) if not missing else lines
    return FilePlan(path, sha256_text(base), lines, new, located, had)
