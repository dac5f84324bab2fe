"""Parsing and policing of a pushed requirements file.

The policy keeps builds reproducible and the supply chain narrow:

- every requirement is pinned to one exact version with ``==`` (no wildcard), unless the layer spec
  sets ``allow_ranges = true``;
- no URLs, VCS links, ``name @ url`` direct references, editable installs or local paths;
- no ``-r``/``-c`` includes and no pip options, except ``--hash=sha256:...`` after a requirement;
  when one requirement carries hashes, all of them must (pip then runs with ``--require-hashes``);
- no ``${VAR}`` environment variables, which pip would expand at build time;
- each project appears once (names compared in canonical form);
- the file is UTF-8 text without control or invisible characters, so every tool numbers its lines the
  same way and shows what pip reads;
- a marker must hold on at least one of the layer's targets (:func:`check_markers`).

Requirement strings are parsed with :class:`packaging.requirements.Requirement` (PEP 508); this
module only splits the file into logical lines, the way pip does, and applies the policy.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field

from layershift_core.errors import InvalidRequirements, LayershiftError

MAX_BYTES = 1024 * 1024
MAX_REQUIREMENTS = 2000
MAX_LINE_CHARS = 16_384
MAX_REPORTED_PROBLEMS = 20
_MAX_QUOTED = 160

_COMMENT_RE = re.compile(r"(^|\s+)#.*$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://|^file:", re.IGNORECASE)
_VCS_RE = re.compile(r"^(git|hg|svn|bzr)\+", re.IGNORECASE)
_ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")
_ENV_VAR_RE = re.compile(r"\$\{[A-Z0-9_]+\}")
_NOT_PLAIN_ASCII_RE = re.compile(r"[^\t\n\x20-\x7e]")
_HIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}

_INCLUDE_OPTIONS = {"-r", "--requirement", "-c", "--constraint"}
_EDITABLE_OPTIONS = {"-e", "--editable"}
_INDEX_OPTIONS = {
    "-i",
    "--index-url",
    "--extra-index-url",
    "--no-index",
    "-f",
    "--find-links",
    "--trusted-host",
}
_OTHER_OPTIONS = {
    "--no-binary",
    "--only-binary",
    "--prefer-binary",
    "--require-hashes",
    "--pre",
    "--use-feature",
    "--global-option",
    "--config-settings",
    "--hash",
}
_LONG_OPTIONS = {
    option
    for option in _INCLUDE_OPTIONS | _EDITABLE_OPTIONS | _INDEX_OPTIONS | _OTHER_OPTIONS
    if option.startswith("--")
}


class PinnedRequirement(BaseModel):
    """One requirement of the file, as parsed and normalised."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="canonical project name (PEP 503)")
    extras: tuple[str, ...] = ()
    specifier: str = Field(default="", description="normalised specifier set, e.g. '==2.32.3'")
    marker: str | None = None
    hashes: tuple[str, ...] = ()
    line: int = Field(description="1-based line number in the source file")
    text: str = Field(description="the requirement as written (continuations joined)")

    @property
    def version(self) -> str | None:
        """The pinned version, when the specifier is a single exact ``==`` pin."""
        specs = list(SpecifierSet(self.specifier))
        if len(specs) == 1 and specs[0].operator == "==" and not specs[0].version.endswith(".*"):
            return specs[0].version
        return None

    def requirement_string(self) -> str:
        """The PEP 508 string, with the canonical name (no hashes)."""
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        marker = f"; {self.marker}" if self.marker else ""
        return f"{self.name}{extras}{self.specifier}{marker}"

    def to_line(self) -> str:
        """The normalised requirements-file line, hashes kept."""
        hashes = "".join(f" --hash={h}" for h in self.hashes)
        return self.requirement_string() + hashes

    def applies_to(self, environment: Mapping[str, str]) -> bool:
        """Whether the marker (if any) holds in the given PEP 508 marker environment."""
        if not self.marker:
            return True
        return Marker(self.marker).evaluate(dict(environment))


class RequirementSet(BaseModel):
    """A requirements file that passed the policy."""

    model_config = ConfigDict(frozen=True)

    source: str = "requirements.txt"
    allow_ranges: bool = False
    requirements: tuple[PinnedRequirement, ...] = ()

    @property
    def require_hashes(self) -> bool:
        """True when the requirements carry hashes (pip must run with ``--require-hashes``)."""
        return any(r.hashes for r in self.requirements)

    def names(self) -> list[str]:
        """Canonical names of the requirements, sorted."""
        return sorted(r.name for r in self.requirements)

    def normalised_text(self) -> str:
        """One requirement per line, canonical names, sorted by name; markers and hashes kept."""
        lines = sorted(r.to_line() for r in self.requirements)
        return "".join(f"{line}\n" for line in lines)


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, line: int, text: str, problem: str) -> None:
        quoted = text if len(text) <= _MAX_QUOTED else text[: _MAX_QUOTED - 3] + "..."
        self.items.append(f'{self.source} line {line}: "{quoted}" {problem}')

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_REPORTED_PROBLEMS]
        more = len(self.items) - len(shown)
        if more:
            shown.append(f"... and {more} more problem(s) in {self.source}")
        raise InvalidRequirements("\n".join(shown))


def decode_text(data: str | bytes, *, source: str, max_bytes: int, error: type[LayershiftError]) -> str:
    """The text of a pushed file: strict UTF-8 of at most `max_bytes`, a leading BOM dropped, and no
    control or invisible character (tab, LF and CRLF aside). Raises `error` naming the line."""
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        line = raw[:max_bytes].count(b"\n") + 1
        raise error(
            f"{source} line {line}: the file is over the limit of {max_bytes:,} bytes from this line on "
            f"({len(raw):,} bytes in all)"
        )
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise error(f"{source} line {line}: contains a NUL byte; the file must be UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{source} line {line}: is not valid UTF-8 ({exc.reason})") from None
    text = text.removeprefix("\ufeff")
    for match in _NOT_PLAIN_ASCII_RE.finditer(text):
        char = match.group()
        if unicodedata.category(char) not in _HIDDEN_CATEGORIES or text.startswith("\r\n", match.start()):
            continue
        line = text.count("\n", 0, match.start()) + 1
        if char == "\r":
            raise error(
                f"{source} line {line}: has a carriage return (CR) that does not end the line; "
                "save the file with LF or CRLF line endings"
            )
        kind = "control" if unicodedata.category(char) == "Cc" else "invisible"
        name = unicodedata.name(char, "")
        raise error(
            f"{source} line {line}: contains the {kind} character U+{ord(char):04X}{' ' + name if name else ''}"
        )
    return text


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines and drop comments, as pip does. Yields (first line number, text)."""
    out: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, physical in enumerate(text.splitlines(), start=1):
        line = _COMMENT_RE.sub("", physical).rstrip()
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line.strip())
        joined = " ".join(p for p in parts if p)
        parts = []
        if joined:
            out.append((start, joined))
    if parts:
        joined = " ".join(p for p in parts if p)
        if joined:
            out.append((start, joined))
    return out


def _looks_like_path(token: str) -> bool:
    return (
        token.startswith((".", "/", "~", "\\"))
        or "/" in token
        or "\\" in token
        or token.lower().endswith(_ARCHIVE_SUFFIXES)
        or re.match(r"^[a-zA-Z]:[\\/]", token) is not None
    )


def _option_name(token: str) -> str:
    """The pip option a token names: ``-ihttps://x`` is ``-i``, and pip (optparse) takes an unambiguous
    abbreviation such as ``--extra-index=x`` for ``--extra-index-url``."""
    name = token.split("=", 1)[0]
    if not name.startswith("--"):
        return name[:2]
    if name in _LONG_OPTIONS:
        return name
    matches = [option for option in _LONG_OPTIONS if option.startswith(name)]
    return matches[0] if len(matches) == 1 else name


def _named_option_problem(option: str) -> str | None:
    if option in _INCLUDE_OPTIONS:
        return "includes another file; -r/-c includes are not allowed, list every requirement here"
    if option in _EDITABLE_OPTIONS:
        return "is an editable install; -e is not allowed, pin a released version with =="
    if option in _INDEX_OPTIONS:
        return f"overrides the package index ({option}); index and trusted-host options are not allowed"
    return None


def _parse_options(tokens: list[str]) -> tuple[list[str], str | None]:
    """Parse per-requirement options; only ``--hash`` is allowed. Returns (hashes, problem)."""
    hashes: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--hash" and i + 1 < len(tokens):
            value = tokens[i + 1]
            i += 2
        elif token.startswith("--hash="):
            value = token.split("=", 1)[1]
            i += 1
        else:
            option = _option_name(token)
            return hashes, _named_option_problem(option) or (
                f"uses the pip option {option}; only --hash=sha256:<digest> is allowed"
            )
        if not _HASH_RE.match(value):
            return hashes, (f"has a malformed hash {value!r}; use --hash=sha256: followed by 64 lowercase hex digits")
        hashes.append(value)
    return hashes, None


def _option_problem(tokens: list[str]) -> str:
    option = _option_name(tokens[0])
    if option == "--hash":
        return "is a --hash option without a requirement before it"
    return _named_option_problem(option) or (
        f"is a pip option ({option}); pip options are not allowed in a layer's requirements"
    )


def _check_specifier(req: Requirement, allow_ranges: bool) -> str | None:
    if allow_ranges:
        return None
    specs = list(req.specifier)
    ranges_hint = "(or set allow_ranges = true in layer.toml)"
    if not specs or (len(specs) == 1 and specs[0].operator != "=="):
        return f"is not pinned; pin it with == {ranges_hint}"
    if len(specs) > 1:
        return f"has more than one version clause; pin it with == {ranges_hint}"
    if specs[0].version.endswith(".*"):
        return f"uses a wildcard pin; pin one exact version with == {ranges_hint}"
    return None


def _parse_line(number: int, line: str, allow_ranges: bool, problems: _Problems) -> PinnedRequirement | None:
    if len(line) > MAX_LINE_CHARS:
        problems.add(number, line, f"is {len(line):,} characters long, over the limit of {MAX_LINE_CHARS:,}")
        return None
    if variable := _ENV_VAR_RE.search(line):
        problems.add(number, line, f"uses the environment variable {variable[0]}, which pip would expand at build time")
        return None
    tokens = line.split()
    if tokens[0].startswith("-"):
        problems.add(number, line, _option_problem(tokens))
        return None
    option_at = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
    req_text = " ".join(tokens[:option_at])
    hashes, option_problem = _parse_options(tokens[option_at:])
    if option_problem:
        problems.add(number, line, option_problem)
        return None
    if _VCS_RE.match(req_text):
        problems.add(number, line, "is a VCS link; only released packages pinned with == are allowed")
        return None
    if _URL_RE.match(req_text):
        problems.add(number, line, "is a URL; only released packages pinned with == are allowed")
        return None
    if "@" not in req_text and _looks_like_path(req_text.split(";")[0].strip()):
        problems.add(number, line, "is a local path; only released packages pinned with == are allowed")
        return None
    try:
        req = Requirement(req_text)
    except InvalidRequirement as exc:
        detail = str(exc).splitlines()[0]
        problems.add(number, line, f"is not a valid requirement ({detail})")
        return None
    except RecursionError:
        problems.add(number, line, "is not a valid requirement (its marker is nested too deeply)")
        return None
    if req.url:
        problems.add(
            number,
            line,
            "is a direct reference (name @ url); only released packages pinned with == are allowed",
        )
        return None
    spec_problem = _check_specifier(req, allow_ranges)
    if spec_problem:
        problems.add(number, line, spec_problem)
        return None
    return PinnedRequirement(
        name=canonicalize_name(req.name),
        extras=tuple(sorted(canonicalize_name(e) for e in req.extras)),
        specifier=str(req.specifier),
        marker=str(req.marker) if req.marker else None,
        hashes=tuple(sorted(set(hashes))),
        line=number,
        text=line,
    )


def parse_requirements(
    text: str | bytes, *, allow_ranges: bool = False, source: str = "requirements.txt"
) -> RequirementSet:
    """Parse a requirements file and apply the policy.

    Raises :class:`InvalidRequirements` listing every offending line, each with the source name,
    the line number and the text.
    """
    decoded = decode_text(text, source=source, max_bytes=MAX_BYTES, error=InvalidRequirements)
    problems = _Problems(source)
    lines = _logical_lines(decoded)
    if len(lines) > MAX_REQUIREMENTS:
        number, line = lines[MAX_REQUIREMENTS]
        problems.add(
            number,
            line,
            f"is requirement {MAX_REQUIREMENTS + 1:,} of {len(lines):,}; a layer may have at most {MAX_REQUIREMENTS:,}",
        )
        problems.raise_if_any()
    parsed: list[PinnedRequirement] = []
    seen: dict[str, PinnedRequirement] = {}
    for number, line in lines:
        req = _parse_line(number, line, allow_ranges, problems)
        if req is None:
            continue
        first = seen.get(req.name)
        if first is not None:
            what = "repeats" if first.requirement_string() == req.requirement_string() else "conflicts with"
            problems.add(number, line, f'{what} "{first.text}" on line {first.line}; list each project once')
            continue
        seen[req.name] = req
        parsed.append(req)
    if any(r.hashes for r in parsed):
        for req in parsed:
            if not req.hashes:
                problems.add(
                    req.line,
                    req.text,
                    "has no --hash; when one requirement carries hashes, every requirement must",
                )
    problems.raise_if_any()
    return RequirementSet(
        source=source,
        allow_ranges=allow_ranges,
        requirements=tuple(sorted(parsed, key=lambda r: r.name)),
    )


def check_markers(reqs: RequirementSet, environments: Mapping[str, Mapping[str, str]]) -> None:
    """Refuse requirements whose marker cannot be evaluated or holds on none of the layer's targets,
    so a pin cannot quietly vanish from the build.

    `environments` maps each target's label (e.g. ``python3.13/x86_64``) to its PEP 508 marker environment.
    """
    problems = _Problems(reqs.source)
    for req in sorted(reqs.requirements, key=lambda r: r.line):
        try:
            holds = any(req.applies_to(environment) for environment in environments.values())
        except ValueError as exc:
            problems.add(req.line, req.text, f"has a marker that cannot be evaluated ({exc})")
            continue
        if not holds:
            problems.add(
                req.line,
                req.text,
                f"has a marker that holds on none of the layer's targets ({', '.join(environments)}), "
                "so it would never be installed; fix the marker or remove the line",
            )
    problems.raise_if_any()
