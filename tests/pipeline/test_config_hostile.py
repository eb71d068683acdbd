"""Hostile configs and ``--set`` values: every bad input is one ConfigError line naming its key.

The hypothesis tests fuzz ``config_from_dict``, ``parse_overrides``/``load_config`` and YAML
files with NaN/inf, huge integers, wrong types, unknown keys, deep nesting and unicode; the
property is that only :class:`ConfigError` escapes, each issue is one line, and an accepted
config holds only finite numbers.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exitflow.pipeline.config import Config, config_from_dict, load_config, parse_overrides
from exitflow.pipeline.config_schema import MAX_YAML_BYTES, to_dict
from exitflow.pipeline.errors import ConfigError

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)


def write(tmp_path: Path, data: str | bytes, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def issues_of(path: Path | None, overrides: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.issues


def section_keys() -> list[str]:
    """Every dotted ``section.field`` key of the schema."""
    keys = []
    for section in dataclasses.fields(Config):
        default = getattr(Config(), section.name)
        if dataclasses.is_dataclass(default):
            keys += [f"{section.name}.{f.name}" for f in dataclasses.fields(default)]
    return keys


KEYS = section_keys()


# ---------------------------------------------------------------- YAML caps
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (BOMB, "aliases expand to more than"),
        ("data: " + "[" * 1000 + "]" * 1000, "nested deeper than 64"),
        ("x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 100)), "nested deeper than 64"),
        ("bench:\n  lambdas: &a [1, *a]\n", "recursive alias"),
        ("data:\n  seed: " + "9" * 5000 + "\n", "too long to convert"),
    ],
)
def test_hostile_yaml_is_rejected_before_expansion(tmp_path: Path, text: str, needle: str) -> None:
    issues = issues_of(write(tmp_path, text))
    assert len(issues) == 1 and needle in issues[0] and "\n" not in issues[0]


def test_non_utf8_oversized_and_directory_configs(tmp_path: Path) -> None:
    assert "not UTF-8" in issues_of(write(tmp_path, "data:\n  root: caf\xe9\n".encode("latin-1")))[0]
    assert "larger than" in issues_of(write(tmp_path, b"#" * (MAX_YAML_BYTES + 1)))[0]
    assert "is a directory" in issues_of(tmp_path)[0]


# ---------------------------------------------------------------- values
@pytest.mark.parametrize(
    ("setting", "key", "needle"),
    [
        ("train.lr=.nan", "train.lr", "finite"),
        ("stream.slop_ms=.inf", "stream.slop_ms", "finite"),  # no range check, still finite
        ("data.audio_snr_db=-.inf", "data.audio_snr_db", "finite"),  # optional float
        ("bench.lambdas=[1.0, .nan]", "bench.lambdas[1]", "finite"),
        ("fusion.exit_thresholds={image: .inf}", "fusion.exit_thresholds.image", "finite"),
        ("engine.num_threads=100000000", "engine.num_threads", "<= 1024"),
        ("train.num_threads=5000", "train.num_threads", "<= 1024"),
        ("train.batch_size=99999999999", "train.batch_size", "<="),
        ("data.seed=" + "9" * 40, "data.seed", "64-bit"),
        ("stream.policies={image: bogus}", "stream.policies.image", "'exact', 'approximate', 'latest'"),
        (
            "stream.policies={smell: exact}",
            "stream.policies.smell",
            "unknown key (allowed: image, audio, text)",
        ),
        ("stream.trigger=video", "stream.trigger", "one of"),
        ('data.root="a\\0b"', "data.root", "NUL"),
        ("encoder.text_exit_layers=[0, 2]", "encoder.text_exit_layers[0]", ">= 1"),
        ("replay.split=true", "replay.split", "one of"),
        ("power.sample_hz=1.0e+999", "power.sample_hz", "finite"),
    ],
)
def test_bad_values_name_their_key(setting: str, key: str, needle: str) -> None:
    issues = issues_of(None, (setting,))
    assert len(issues) == 1, issues
    assert issues[0].startswith(key + ":") and needle in issues[0]


def test_same_checks_apply_to_the_file(tmp_path: Path) -> None:
    issues = issues_of(
        write(tmp_path, "train:\n  lr: .nan\nengine:\n  num_threads: 1e9\nstream:\n  policies: {text: x}\n")
    )
    assert [i.split(":")[0] for i in issues] == ["train.lr", "engine.num_threads", "stream.policies.text"]


def test_output_paths_must_be_creatable(tmp_path: Path) -> None:
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    cases = {
        f"replay.decisions_path={tmp_path}": "existing directory",
        f"stream.record={blocker}/out.mcap": "is a file",
        f"data.cache_dir={blocker}": "not a directory",
        f"train.checkpoint_dir={blocker}/ck": "is a file",
        f"encoder.run_dir={blocker}": "not a directory",
    }
    for setting, needle in cases.items():
        issues = issues_of(None, (setting,))
        assert len(issues) == 1 and issues[0].startswith(setting.split("=")[0] + ":") and needle in issues[0]
    ok = load_config(None, (f"replay.decisions_path={tmp_path}/new/d.jsonl",))
    assert ok.replay.decisions_path.endswith("d.jsonl")


def test_hostile_set_keys() -> None:
    assert "at most 64" in issues_of(None, (".".join(["a"] * 500) + "=1",))[0]
    assert "KEY=VALUE" in issues_of(None, ("=1",))[0]
    long_key = issues_of(None, ("x" * 100_000 + "=1",))[0]
    assert len(long_key) < 300 and "unknown key" in long_key
    assert "unknown key" in issues_of(None, ("data.a\nb=1",))[0]
    assert (
        "tags are not allowed" in issues_of(None, ("data.root=!!python/object/apply:os.system ['true']",))[0]
    )
    assert load_config(None, ("data.root='!x'",)).data.root == "!x"


# ---------------------------------------------------------------- property-based fuzzing
LEAF = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**63, -(2**63) - 1, 10**30, 0, -1, 1, 1025]),
    st.text(max_size=30),
    st.sampled_from(["\x00", "é" * 5, "𝔘𝔫𝔦", "", " ", "a\nb", "x" * 5000]),
    st.booleans(),
    st.none(),
)
VALUE = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
DEEP = st.integers(min_value=1, max_value=300).map(lambda n: _nest(n))


def _nest(depth: int) -> Any:
    value: Any = 1.0
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def assert_clean(error: ConfigError) -> None:
    assert error.issues, "a ConfigError must list at least one problem"
    for issue in error.issues:
        assert isinstance(issue, str) and issue and "\n" not in issue and len(issue) < 1000


def assert_finite(cfg: Config) -> None:
    stack = [to_dict(cfg)]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
        elif isinstance(node, float):
            assert math.isfinite(node)
        elif isinstance(node, int) and not isinstance(node, bool):
            assert abs(node) < 2**63


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(key=st.sampled_from(KEYS), value=st.one_of(VALUE, DEEP))
def test_fuzz_config_from_dict_known_keys(key: str, value: Any) -> None:
    section, name = key.split(".")
    try:
        cfg = config_from_dict({section: {name: value}})
    except ConfigError as e:
        assert_clean(e)
        assert any(i.startswith(key) for i in e.issues), e.issues
    else:
        assert_finite(cfg)


@FUZZ
@given(
    data=st.dictionaries(
        st.one_of(st.sampled_from(["data", "train", "stream", "bench"]), st.text(max_size=10)),
        st.one_of(VALUE, DEEP, st.dictionaries(st.text(max_size=12), VALUE, max_size=3)),
        max_size=4,
    )
)
def test_fuzz_config_from_dict_any_shape(data: dict[Any, Any]) -> None:
    try:
        assert_finite(config_from_dict(data))
    except ConfigError as e:
        assert_clean(e)


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            ".nan",
            ".inf",
            "-.inf",
            "1.0e+999",
            "9" * 5000,
            "[" * 200,
            "{a: " * 100,
            "&a [*a]",
            BOMB.replace("\n", ", "),
            "!!python/object/apply:os.system ['true']",
            "!!binary aGVsbG8=",
            "2024-01-01",
            "~",
            "0x7fffffffffffffffff",
        ]
    ),
)


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), text=HOSTILE_TEXT)
def test_fuzz_set_values(key: str, text: str) -> None:
    tree, errors = parse_overrides([f"{key}={text}"])
    assert all("\n" not in e for e in errors)
    try:
        assert_finite(load_config(None, (f"{key}={text}",)))
    except ConfigError as e:
        assert_clean(e)


@settings(max_examples=60, deadline=None)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        HOSTILE_TEXT.map(lambda t: f"train:\n  lr: {t}\n".encode(errors="surrogatepass")),
    )
)
def test_fuzz_yaml_files(body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(body)
        try:
            assert_finite(load_config(path))
        except ConfigError as e:
            assert_clean(e)
