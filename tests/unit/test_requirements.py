"""The requirements policy: what is accepted, what is refused, and how each refusal reads."""

import pytest

from layershift_core.errors import InvalidRequirements
from layershift_core.requirements import MAX_REQUIREMENTS, parse_requirements

HASH_A = "sha256:" + "a" * 64
HASH_B = "sha256:" + "b" * 64


def _error(text: str, **kwargs) -> str:
    with pytest.raises(InvalidRequirements) as info:
        parse_requirements(text, **kwargs)
    return str(info.value)


def test_accepts_pinned_requirements_with_comments_extras_and_markers() -> None:
    text = (
        "# the API's dependencies\n"
        "\n"
        "Requests==2.32.3  # http\n"
        "aws_lambda_powertools[Tracer,validation]==3.3.0\n"
        'tomli==2.0.1 ; python_version < "3.11"\n'
    )
    reqs = parse_requirements(text)
    assert reqs.names() == ["aws-lambda-powertools", "requests", "tomli"]
    assert reqs.normalised_text() == (
        'aws-lambda-powertools[tracer,validation]==3.3.0\nrequests==2.32.3\ntomli==2.0.1; python_version < "3.11"\n'
    )
    assert not reqs.require_hashes
    requests = next(r for r in reqs.requirements if r.name == "requests")
    assert requests.line == 3
    assert requests.version == "2.32.3"


def test_normalised_text_is_independent_of_order_spelling_and_comments() -> None:
    a = parse_requirements("six==1.16.0\nPyJWT==2.10.0\n")
    b = parse_requirements("# pinned\npyjwt == 2.10.0   # auth\n\n  six==1.16.0\n")
    assert a.normalised_text() == b.normalised_text()


def test_hashes_and_line_continuations() -> None:
    text = (
        f"six==1.16.0 \\\n    --hash={HASH_B} \\\n    --hash {HASH_A}\n"
        f"    # via -r requirements.in\npyjwt==2.10.0 --hash={HASH_A}\n"
    )
    reqs = parse_requirements(text)
    assert reqs.require_hashes
    six = next(r for r in reqs.requirements if r.name == "six")
    assert six.hashes == (HASH_A, HASH_B)
    assert six.line == 1
    assert f"six==1.16.0 --hash={HASH_A} --hash={HASH_B}\n" in reqs.normalised_text()


def test_the_documented_message_for_an_unpinned_requirement() -> None:
    message = _error("six==1.16.0\n\nrequests>=2\n")
    assert message == (
        'requirements.txt line 3: "requests>=2" is not pinned; pin it with == '
        "(or set allow_ranges = true in layer.toml)"
    )


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("requests", "is not pinned"),
        ("requests>=2,<3", "more than one version clause"),
        ("requests~=2.31", "is not pinned"),
        ("requests==2.*", "wildcard"),
        ("requests===2.31.0", "is not pinned"),
        ("-e git+https://github.com/psf/requests#egg=requests", "editable"),
        ("--editable .", "editable"),
        ("-r other.txt", "includes another file"),
        ("--constraint constraints.txt", "includes another file"),
        ("--index-url https://mirror.example/simple", "overrides the package index"),
        ("-i https://mirror.example/simple", "overrides the package index"),
        ("--extra-index-url https://mirror.example/simple", "overrides the package index"),
        ("--trusted-host mirror.example", "overrides the package index"),
        ("--find-links /wheels", "overrides the package index"),
        ("--pre", "pip option"),
        ("https://example.com/requests-2.31.0-py3-none-any.whl", "is a URL"),
        ("git+https://github.com/psf/requests", "VCS link"),
        ("requests @ https://example.com/requests.tar.gz", "direct reference"),
        ("./vendor/mylib", "local path"),
        ("/abs/mylib-1.0-py3-none-any.whl", "local path"),
        ("mylib-1.0.tar.gz", "local path"),
        ("requests==2.31.0 --install-option=--prefix=/x", "pip option --install-option"),
        ("requests==2.31.0 --hash=md5:abc", "malformed hash"),
        ("requests==2.31.0 --hash=sha256:abc", "malformed hash"),
        ("requests==", "not a valid requirement"),
        ("req uests==1.0", "not a valid requirement"),
        ("--hash=" + HASH_A, "without a requirement"),
    ],
)
def test_refused_lines_name_source_line_and_text(line: str, fragment: str) -> None:
    message = _error(f"# header\nsix==1.16.0\n{line}\n", source="layers/api/requirements.txt")
    assert message.startswith(f'layers/api/requirements.txt line 3: "{line}" ')
    assert fragment in message


def test_allow_ranges_relaxes_only_the_pin_rule() -> None:
    reqs = parse_requirements("requests>=2,<3\nsix\n", allow_ranges=True)
    assert reqs.normalised_text() == "requests<3,>=2\nsix\n"
    assert reqs.allow_ranges
    assert "is a URL" in _error("https://example.com/x.whl\n", allow_ranges=True)


def test_duplicates_and_conflicts_use_canonical_names() -> None:
    message = _error("PyJWT==2.10.0\nsix==1.16.0\npyjwt==2.10.0\njwt==1.0\nPy_JWT==2.9.0\npy.jwt==2.8.0\n")
    lines = message.splitlines()
    first = 'requirements.txt line 3: "pyjwt==2.10.0" repeats "PyJWT==2.10.0" on line 1'
    assert lines[0] == first + "; list each project once"
    assert lines[1].startswith('requirements.txt line 6: "py.jwt==2.8.0" conflicts with "Py_JWT==2.9.0" on line 5')
    assert len(lines) == 2


def test_all_or_no_requirements_carry_hashes() -> None:
    message = _error(f"six==1.16.0 --hash={HASH_A}\npyjwt==2.10.0\n")
    assert message.startswith('requirements.txt line 2: "pyjwt==2.10.0" has no --hash')


def test_every_problem_is_reported() -> None:
    message = _error("a>=1\nb==2\nc\n-e .\n")
    assert [line.split(":")[0] for line in message.splitlines()] == [
        "requirements.txt line 1",
        "requirements.txt line 3",
        "requirements.txt line 4",
    ]


def test_continued_line_is_reported_at_its_first_line() -> None:
    message = _error("six==1.16.0\nrequests>=2 \\\n  --hash=" + HASH_A + "\n")
    assert message.startswith(f'requirements.txt line 2: "requests>=2 --hash={HASH_A}" is not pinned')


def test_bytes_input_is_decoded_strictly() -> None:
    assert parse_requirements(b"\xef\xbb\xbfsix==1.16.0\n").names() == ["six"]
    assert _error(b"six==1.16.0\nfoo==1\xff\n") == ("requirements.txt line 2: is not valid UTF-8 (invalid start byte)")
    assert "line 2: contains a NUL byte" in _error("six==1.16.0\nfo\x00o==1\n")


def test_size_and_line_limits() -> None:
    assert "over the limit of 1,048,576 bytes" in _error("#" * (1024 * 1024 + 1))
    many = "".join(f"pkg{i}==1.0\n" for i in range(MAX_REQUIREMENTS + 1))
    assert _error(many).startswith('requirements.txt line 2001: "pkg2000==1.0" is requirement 2,001 of 2,001; a layer')
    assert len(parse_requirements("".join(f"pkg{i}==1.0\n" for i in range(MAX_REQUIREMENTS))).names()) == 2000


def test_empty_file_is_an_empty_set() -> None:
    reqs = parse_requirements("# nothing yet\n\n")
    assert reqs.names() == []
    assert reqs.normalised_text() == ""
