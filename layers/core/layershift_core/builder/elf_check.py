"""Static check of the layer's shared objects against the Lambda runtime they will load on.

The import smoke test can only load shared objects of the build host's architecture, and even
there it loads them against the build host's libraries, not the Lambda base image's. This check
reads every shared object of the built tree (``*.so``, ``*.so.N...``, vendored ``*.libs/`` folders
included) with pyelftools, the ELF reader auditwheel uses, and without running anything asks:

- is it an ELF object of the target's machine type (``EM_X86_64`` or ``EM_AARCH64``, 64-bit)?
- is every ``DT_NEEDED`` library found, either in the layer (through the object's RPATH/RUNPATH
  with ``$ORIGIN``, in ``/opt/lib`` which is on Lambda's ``LD_LIBRARY_PATH``, or by soname anywhere
  in the layer) or in the runtime's base image (:data:`SYSTEM_LIBRARIES`)?
- are the ``GLIBC_x.y`` versions it requires (``.gnu.version_r``) at most the runtime's glibc, and
  the ``GLIBCXX_``/``CXXABI_`` versions at most the image's libstdc++ when it links the image's?

It is the check that still runs for an arm64 build on an x86_64 host, where nothing can be imported
(:func:`find_target_interpreter` says whether qemu-user could run the target's Python here).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection

from layershift_core.builder import distributions
from layershift_core.builder.platforms import Target, host_can_run, runs_as
from layershift_core.errors import BinaryCheckFailed

# The ELF machine type of each wheel machine name.
ELF_MACHINES: dict[str, str] = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}

# Which Amazon Linux each runtime's base image is built on (docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html).
RUNTIME_OS: dict[str, str] = {
    "python3.11": "Amazon Linux 2",
    "python3.12": "Amazon Linux 2023",
    "python3.13": "Amazon Linux 2023",
}

# The libraries of glibc itself: the manylinux policy's glibc entries (auditwheel's
# src/auditwheel/policy/manylinux-policy.json, "lib_whitelist" of manylinux_2_17 and later), which
# every glibc install has. The policy's X11, OpenGL and GLib entries (libX11, libGL, libglib-2.0, ...)
# are left out on purpose: PEP 599 allows them because desktop distributions have them, but Lambda's
# minimal base images do not ship a desktop stack.
_GLIBC_LIBRARIES = frozenset(
    {
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        "libutil.so.1",
        "libresolv.so.2",
        "libnsl.so.1",
        "libanl.so.1",
    }
)
# The dynamic loader is a DT_NEEDED entry of some objects (for example libstdc++ itself).
_LOADERS: dict[str, str] = {"x86_64": "ld-linux-x86-64.so.2", "aarch64": "ld-linux-aarch64.so.1"}
# libmvec (glibc's vector math, in the manylinux_2_24+ policy) exists for x86_64 since glibc 2.22;
# glibc 2.26 and 2.34 build it for no other architecture that Lambda runs.
_ARCH_GLIBC_LIBRARIES: dict[str, frozenset[str]] = {"x86_64": frozenset({"libmvec.so.1"}), "aarch64": frozenset()}
# The GCC runtime: both base images have libgcc_s and libstdc++ (the Amazon Linux 2 images' from
# GCC 7, Amazon Linux 2023's from GCC 11); the manylinux policy lets wheels link them unvendored.
_GCC_RUNTIME = frozenset({"libgcc_s.so.1", "libstdc++.so.6"})

# Libraries the runtime's own standard library links, so they are on the image at those sonames:
# CPython's zlib, _ssl/_hashlib, _ctypes, _sqlite3, _lzma and _bz2 extension modules load them
# dynamically (CPython vendors none of them, unlike expat), and zlib, ssl, ctypes, sqlite3, lzma and
# bz2 import on the Lambda runtimes. They are in /lib64 or /var/lang/lib, both on Lambda's LD_LIBRARY_PATH
# (docs.aws.amazon.com/lambda/latest/dg/configuration-envvars.html#configuration-envvars-runtime).
# Versions: Python 3.10+ needs OpenSSL 1.1.1 (PEP 644), which Amazon Linux 2 has only as its
# openssl11 package, libssl.so.1.1 (AL2's own OpenSSL 1.0.2k, libssl.so.10, is left out: it was in
# /lib64 of the python3.8 runtime, awslabs/aws-media-replay-engine#13, but nothing says the rebuilt
# python3.11 image keeps it); the python3.11 image's libffi is libffi.so.6
# (aws/aws-lambda-base-images#129 and #133, a regression AWS fixed) and it ships
# /var/lang/lib/liblzma.so.5 (aws/aws-lambda-base-images#127). Amazon Linux 2023 has OpenSSL 3.0
# (libssl.so.3, libcrypto.so.3: amazonlinux/amazon-linux-2023#625 shows both in /lib64, and in a
# Lambda image's /var/lang/lib) and libffi 3.4 (libffi.so.8).
# Not listed, though the images may have them: libexpat (CPython vendors its own expat), libuuid,
# libcrypt, ncurses/readline. A wheel needing one of them fails this check until it is shown here.
_STDLIB_LIBRARIES: dict[str, frozenset[str]] = {
    "al2": frozenset(
        {
            "libz.so.1",
            "libssl.so.1.1",
            "libcrypto.so.1.1",
            "libffi.so.6",
            "libsqlite3.so.0",
            "liblzma.so.5",
            "libbz2.so.1",
        }
    ),
    "al2023": frozenset(
        {
            "libz.so.1",
            "libssl.so.3",
            "libcrypto.so.3",
            "libffi.so.8",
            "libsqlite3.so.0",
            "liblzma.so.5",
            "libbz2.so.1",
        }
    ),
}
_RUNTIME_IMAGE: dict[str, str] = {"python3.11": "al2", "python3.12": "al2023", "python3.13": "al2023"}

# The newest libstdc++ symbol versions of each image: GCC 7.3 (Amazon Linux 2's gcc, libstdc++.so.6.0.24)
# defines up to GLIBCXX_3.4.24 and CXXABI_1.3.11; GCC 11 (Amazon Linux 2023's, libstdc++.so.6.0.29)
# up to GLIBCXX_3.4.29 and CXXABI_1.3.13. Source: the symbol version history in the libstdc++ manual,
# "ABI Policy and Guidelines" (gcc.gnu.org/onlinedocs/libstdc++/manual/abi.html), and Amazon Linux
# 2023's package list (gcc 11.4: docs.aws.amazon.com/linux/al2023/release-notes/).
LIBSTDCXX_VERSIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "al2": {"GLIBCXX": (3, 4, 24), "CXXABI": (1, 3, 11)},
    "al2023": {"GLIBCXX": (3, 4, 29), "CXXABI": (1, 3, 13)},
}
# GLIBC_ABI_DT_RELR marks objects linked with packed relative relocations, which glibc loads from 2.36 on.
_GLIBC_MARKERS: dict[str, tuple[int, ...]] = {"GLIBC_ABI_DT_RELR": (2, 36)}

_SHARED_OBJECT_RE = re.compile(r"\.so(\.\d+)*$")
_VERSION_RE = re.compile(r"^(?P<family>[A-Z]+)_(?P<version>\d+(\.\d+)*)$")
# Lambda's LD_LIBRARY_PATH includes /opt/lib: a layer's lib/ folder is searched for every object.
_LAYER_LIBRARY_DIR = "lib"


# The sonames of each runtime's base image, as data: every target architecture of each runtime.
SYSTEM_LIBRARIES: dict[str, dict[str, frozenset[str]]] = {
    runtime: {
        machine: _GLIBC_LIBRARIES
        | _ARCH_GLIBC_LIBRARIES[machine]
        | {_LOADERS[machine]}
        | _GCC_RUNTIME
        | _STDLIB_LIBRARIES[image]
        for machine in ELF_MACHINES
    }
    for runtime, image in _RUNTIME_IMAGE.items()
}


def system_libraries(target: Target) -> frozenset[str]:
    """The sonames the target runtime's base image provides outside any layer."""
    return SYSTEM_LIBRARIES[target.runtime][target.machine]


@dataclass
class ElfReport:
    """What the static check of the layer's shared objects found."""

    checked: int = 0
    needed: int = 0
    resolved_in_layer: int = 0
    resolved_system: int = 0
    max_glibc: str | None = None
    failures: list[str] = field(default_factory=list)
    runtime: str = ""
    runtime_glibc: str = ""
    max_glibcxx: str | None = None
    # each shared object checked (relative path) -> its distribution, or None when unknown
    objects: dict[str, str | None] = field(default_factory=dict)

    def summary(self) -> str:
        """One line with the figures."""
        line = (
            f"{self.checked} shared objects checked, {self.resolved_in_layer + self.resolved_system} needed "
            f"libraries resolved ({self.resolved_in_layer} in the layer, {self.resolved_system} system)"
        )
        if self.max_glibc is not None:
            line += f", glibc <= {self.max_glibc} required"
            if self.runtime_glibc:
                line += f" (runtime has {self.runtime_glibc})"
        if self.failures:
            line += f", {len(self.failures)} problem(s)"
        return line

    def error(self) -> BinaryCheckFailed:
        """The exception that reports this check's failures."""
        where = f" on the {self.runtime} runtime" if self.runtime else ""
        return BinaryCheckFailed(f"shared objects of the layer cannot load{where}:\n" + "\n".join(self.failures))


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def _shared_objects(layer_root: Path) -> Iterator[Path]:
    for current, dirs, files in os.walk(layer_root):
        dirs.sort()
        for name in sorted(files):
            if _SHARED_OBJECT_RE.search(name):
                yield Path(current, name)


@dataclass
class _Elf:
    machine: str
    elfclass: int
    soname: str | None
    needed: list[str]
    rpath: list[str]
    runpath: list[str]
    # needed file -> version names required from it
    versions: dict[str, list[str]]


def _dynamic_tags(elf: ELFFile) -> Iterator:
    sections = [s for s in elf.iter_sections() if isinstance(s, DynamicSection)]
    if sections:
        for section in sections:
            yield from section.iter_tags()
        return
    # no section headers (a fully stripped object): the PT_DYNAMIC segment holds the same tags
    for segment in elf.iter_segments():
        if isinstance(segment, DynamicSegment):
            yield from segment.iter_tags()


def _read_elf(path: Path) -> _Elf:
    with path.open("rb") as fh:
        elf = ELFFile(fh)
        soname = None
        needed: list[str] = []
        rpath: list[str] = []
        runpath: list[str] = []
        for tag in _dynamic_tags(elf):
            kind = tag.entry.d_tag
            if kind == "DT_NEEDED":
                needed.append(tag.needed)
            elif kind == "DT_SONAME":
                soname = tag.soname
            elif kind == "DT_RPATH":
                rpath += [p for p in tag.rpath.split(":") if p]
            elif kind == "DT_RUNPATH":
                runpath += [p for p in tag.runpath.split(":") if p]
        versions: dict[str, list[str]] = {}
        for section in elf.iter_sections():
            if isinstance(section, GNUVerNeedSection):
                for verneed, auxiliaries in section.iter_versions():
                    versions.setdefault(str(verneed.name), []).extend(aux.name for aux in auxiliaries)
        return _Elf(elf.header.e_machine, elf.elfclass, soname, needed, rpath, runpath, versions)


def _parse_all(objects: list[Path]) -> dict[Path, _Elf | Exception]:
    """Each regular shared object read once: its ELF facts, or the error that kept it from being read."""
    parsed: dict[Path, _Elf | Exception] = {}
    for path in objects:
        if path.is_symlink():
            continue  # its target is read under its own name
        try:
            parsed[path] = _read_elf(path)
        except (OSError, ELFError, ValueError, EOFError) as exc:
            parsed[path] = exc
    return parsed


def _layer_names(objects: list[Path], parsed: dict[Path, _Elf | Exception]) -> set[str]:
    """Every shared object's file name (symlinks included) and soname in the layer."""
    names = {path.name for path in objects}
    names |= {elf.soname for elf in parsed.values() if isinstance(elf, _Elf) and elf.soname}
    return names


def _search_dirs(entries: list[str], origin: Path, layer_root: Path) -> list[Path]:
    """RPATH/RUNPATH entries as folders of the layer tree (``$ORIGIN`` is the object's folder, /opt the layer)."""
    found: list[Path] = []
    for entry in entries:
        expanded = entry.replace("${ORIGIN}", str(origin)).replace("$ORIGIN", str(origin))
        if entry.startswith("/opt/"):
            expanded = str(layer_root / entry.removeprefix("/opt/"))
        elif not expanded.startswith(str(origin)):
            continue  # an absolute path of the machine that built the wheel: not in the layer
        found.append(Path(os.path.normpath(expanded)))
    return found


def _in_layer(name: str, elf: _Elf, path: Path, layer_root: Path, layer_names: set[str]) -> bool:
    root = layer_root.resolve()
    for folder in [*_search_dirs(elf.rpath + elf.runpath, path.parent, layer_root), layer_root / _LAYER_LIBRARY_DIR]:
        candidate = folder / name
        if candidate.exists() and candidate.resolve().is_relative_to(root):
            return True
    # loaded by soname: once any object of the layer has loaded a library of that soname, the
    # dynamic loader reuses it for every later DT_NEEDED entry of the same name
    return name in layer_names


def owners_from(dists: list[distributions.InstalledDistribution], site_prefix: str) -> Callable[[str], str | None]:
    """An ``owners`` callable for :func:`check_shared_objects` from the build's scanned distributions.

    It maps a path relative to the layer root (``<site_prefix>/pkg/_x.so``) to ``"name version"``
    of the distribution whose RECORD has it (or an owned folder of it, such as ``pkg.libs``).
    """
    labels = {d.name: f"{d.name} {d.version}" for d in dists}
    prefix = "" if site_prefix in ("", ".") else site_prefix.rstrip("/") + "/"
    owned = {f"{prefix}{rel}": labels[name] for rel, name in distributions.owners(dists).items()}
    cache: dict[str, str | None] = {}

    def owner(rel: str) -> str | None:
        if rel not in cache:
            cache[rel] = distributions.owner_of(rel, owned)
        return cache[rel]

    return owner


def _layer_owners(layer_root: Path) -> Callable[[str], str | None]:
    """``owners`` read from every ``.dist-info`` in the layer tree."""
    found = [
        owners_from(distributions.scan(site), site.relative_to(layer_root).as_posix())
        for site in sorted({dist_info.parent for dist_info in layer_root.rglob("*.dist-info")})
    ]

    def owner(rel: str) -> str | None:
        return next((label for label in (f(rel) for f in found) if label), None)

    return owner


def check_shared_objects(
    layer_root: Path, target: Target, owners: Callable[[str], str | None] | None = None
) -> ElfReport:
    """Check every shared object under ``layer_root`` for ``target``; see the module docstring.

    ``owners`` maps a path relative to ``layer_root`` to the distribution that installed it (a name,
    or ``"name version"``: :func:`owners_from` builds one from the build's distributions); without
    it the layer's own ``.dist-info`` RECORDs are read. The report's
    ``failures`` name each file, its distribution when known, and the problem; nothing is raised.
    """
    layer_root = Path(layer_root)
    owner_of = owners if owners is not None else _layer_owners(layer_root)
    objects = list(_shared_objects(layer_root))
    parsed = _parse_all(objects)
    layer_names = _layer_names(objects, parsed)
    system = SYSTEM_LIBRARIES[target.runtime][target.machine]
    image = _RUNTIME_IMAGE[target.runtime]
    glibc = tuple(target.glibc)
    where = f"the {target.runtime} runtime ({RUNTIME_OS[target.runtime]})"
    report = ElfReport(runtime=target.runtime, runtime_glibc=_dotted(glibc))
    max_glibc: tuple[int, ...] | None = None
    max_glibcxx: tuple[int, ...] | None = None
    for path, elf in parsed.items():
        rel = path.relative_to(layer_root).as_posix()
        dist = owner_of(rel)
        label = f"{rel} ({dist})" if dist else rel
        report.objects[rel] = dist
        report.checked += 1
        if isinstance(elf, Exception):
            report.failures.append(f"{label}: not a readable ELF shared object ({type(elf).__name__}: {elf})")
            continue
        expected = ELF_MACHINES[target.machine]
        if elf.machine != expected or elf.elfclass != 64:
            report.failures.append(
                f"{label}: built for {elf.machine} ({elf.elfclass}-bit), the {target.architecture} target "
                f"needs {expected} (64-bit)"
            )
            continue
        system_needed: set[str] = set()
        for name in elf.needed:
            report.needed += 1
            if _in_layer(name, elf, path, layer_root, layer_names):
                report.resolved_in_layer += 1
            elif name in system:
                report.resolved_system += 1
                system_needed.add(name)
            else:
                report.failures.append(
                    f"{label}: needs {name}, which is neither in the layer nor in the base image of {where}"
                )
        required = _required_versions(elf, system_needed, target)
        report.failures += [f"{label}: {problem}" for problem in _version_problems(required, glibc, image, where)]
        if "GLIBC" in required:
            max_glibc = max(filter(None, (max_glibc, required["GLIBC"][0])))
        if "GLIBCXX" in required:
            max_glibcxx = max(filter(None, (max_glibcxx, required["GLIBCXX"][0])))
    report.max_glibc = _dotted(max_glibc) if max_glibc is not None else None
    report.max_glibcxx = _dotted(max_glibcxx) if max_glibcxx is not None else None
    return report


def _required_versions(elf: _Elf, system_needed: set[str], target: Target) -> dict[str, tuple[tuple[int, ...], str]]:
    """The newest version of each family the object requires: ``{"GLIBC": ((2, 34), "GLIBC_2.34"), ...}``.

    GLIBC versions count from glibc's own libraries; GLIBCXX and CXXABI only from the image's
    libstdc++ (a libstdc++ vendored in the layer brings its own versions). ``GLIBC_PRIVATE`` is kept as
    ``PRIVATE``: no glibc but the one an object was linked against has those symbols.
    """
    glibc_libraries = _GLIBC_LIBRARIES | _ARCH_GLIBC_LIBRARIES[target.machine] | {_LOADERS[target.machine]}
    newest: dict[str, tuple[tuple[int, ...], str]] = {}

    def keep(family: str, version: tuple[int, ...], name: str) -> None:
        if family not in newest or version > newest[family][0]:
            newest[family] = (version, name)

    for library, names in elf.versions.items():
        for name in names:
            if library in glibc_libraries:
                if name in _GLIBC_MARKERS:
                    keep("GLIBC", _GLIBC_MARKERS[name], name)
                elif name == "GLIBC_PRIVATE":
                    keep("PRIVATE", (), f"{name} of {library}")
                match = _VERSION_RE.match(name)
                if match and match.group("family") == "GLIBC":
                    keep("GLIBC", _version_tuple(match.group("version")), name)
            elif library == "libstdc++.so.6" and library in system_needed:
                match = _VERSION_RE.match(name)
                if match and match.group("family") in ("GLIBCXX", "CXXABI"):
                    keep(match.group("family"), _version_tuple(match.group("version")), name)
    return newest


def _version_problems(
    required: dict[str, tuple[tuple[int, ...], str]], glibc: tuple[int, ...], image: str, where: str
) -> list[str]:
    """What the required versions ask beyond the runtime's glibc and libstdc++."""
    problems: list[str] = []
    if "GLIBC" in required and required["GLIBC"][0] > glibc:
        version, name = required["GLIBC"]
        shown = name if name.startswith("GLIBC_2") else f"{name} (glibc {_dotted(version)})"
        problems.append(f"needs {shown}, {where} has glibc {_dotted(glibc)}")
    if "PRIVATE" in required:
        problems.append(f"needs {required['PRIVATE'][1]}, which only the glibc it was linked against has")
    for family in ("GLIBCXX", "CXXABI"):
        newest = LIBSTDCXX_VERSIONS[image][family]
        if family in required and required[family][0] > newest:
            problems.append(
                f"needs {required[family][1]} from libstdc++.so.6, the libstdc++ of {where} has up to "
                f"{family}_{_dotted(newest)}"
            )
    return problems


# --- running the target's Python under emulation -------------------------------------------------

# Where a root file system of the target architecture may be: $LAYERSHIFT_SYSROOT_<MACHINE> (for
# example an unpacked Lambda base image of that architecture), then Debian's cross sysroot.
_SYSROOT_ENV = "LAYERSHIFT_SYSROOT_{machine}"
_PYTHON_DIRS = ("var/lang/bin", "usr/local/bin", "usr/bin", "bin")


def _is_target_elf(path: Path, machine: str) -> bool:
    try:
        return _read_elf(path).machine == ELF_MACHINES[machine]
    except (OSError, ELFError, ValueError, EOFError):
        return False


@functools.cache
def _find_target_interpreter(runtime: str, machine: str, python_version: str) -> tuple[str, ...] | None:
    qemu = shutil.which(f"qemu-{machine}") or shutil.which(f"qemu-{machine}-static")
    if qemu is None:
        return None
    sysroots = [os.environ.get(_SYSROOT_ENV.format(machine=machine.upper()), ""), f"/usr/{machine}-linux-gnu"]
    for sysroot in (Path(s) for s in sysroots if s):
        for folder in _PYTHON_DIRS:
            python = sysroot / folder / f"python{python_version}"
            if not python.is_file() or not _is_target_elf(python.resolve(), machine):
                continue
            prefix = [qemu, "-L", str(sysroot)]
            if folder == "var/lang/bin":  # a Lambda image: its Python's libraries are in /var/lang/lib
                prefix += ["-E", "LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64"]
            prefix.append(str(PurePosixPath("/", folder, python.name)))
            if runs_as(prefix, python_version, timeout=120):  # emulated: slower to start
                return tuple(prefix)
    return None


def find_target_interpreter(target: Target) -> list[str] | None:
    """A command prefix that runs the target's CPython under qemu-user, or None.

    Only for a target whose architecture differs from the build host's (for the host's own
    architecture use :func:`~layershift_core.builder.platforms.find_interpreter`): ``qemu-<machine>``
    (or ``qemu-<machine>-static``) on PATH, and a ``python3.X`` of the target's machine type in a root
    file system of that architecture, ``$LAYERSHIFT_SYSROOT_<MACHINE>`` (for example
    ``LAYERSHIFT_SYSROOT_AARCH64`` pointing at an unpacked Lambda base image) or
    ``/usr/<machine>-linux-gnu``. The prefix is, for example,
    ``["qemu-aarch64", "-L", "<sysroot>", "/usr/bin/python3.13"]``: qemu-user maps absolute paths
    into the sysroot first, so the guest Python finds its own standard library there and still sees
    the build host's layer tree. The candidate is run once to check it is that Python version.
    """
    if host_can_run(target):
        return None
    found = _find_target_interpreter(target.runtime, target.machine, target.python_version)
    return list(found) if found is not None else None
