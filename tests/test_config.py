"""Thresholds: declared once, documented, overridable from --set and config files."""

import subprocess
import sys
from pathlib import Path

import pytest

from tracemortem.config import Config, all_thresholds, find_config_file
from tracemortem.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def some_threshold():
    specs = all_thresholds()
    numeric = [s for s in specs.values() if isinstance(s.default, float) and s.high >= 1000]
    if not numeric:
        pytest.skip("no float threshold declared yet")
    return numeric[0]


def test_every_threshold_is_documented_with_a_source():
    specs = all_thresholds()
    assert specs, "rule modules declare their thresholds"
    for spec in specs.values():
        assert spec.doc.strip() and spec.source.strip(), spec.name


def test_docs_page_is_in_step_with_the_code():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_threshold_docs.py"), "--check"])
    assert result.returncode == 0, "run: python scripts/gen_threshold_docs.py"


def test_set_overrides_default(some_threshold):
    config = Config.load(ROOT, [f"{some_threshold.name}={some_threshold.default * 2 + 1}"])
    assert config[some_threshold] == some_threshold.default * 2 + 1
    assert Config()[some_threshold] == some_threshold.default


def test_pyproject_table_overrides_default(tmp_path, some_threshold):
    rule, param = some_threshold.name.split(".", 1)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "x"\n\n[tool.tracemortem]\nfail-on = "warning"\n\n[tool.tracemortem.{rule}]\n{param} = 123.5\n'
    )
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    assert find_config_file(nested) == tmp_path / "pyproject.toml"
    config = Config.load(nested)
    assert config[some_threshold] == 123.5
    assert config.options["fail-on"] == "warning"


def test_tracemortem_toml_wins_over_pyproject(tmp_path, some_threshold):
    rule, param = some_threshold.name.split(".", 1)
    (tmp_path / "pyproject.toml").write_text(f"[tool.tracemortem.{rule}]\n{param} = 1.0\n")
    (tmp_path / "tracemortem.toml").write_text(f"[{rule}]\n{param} = 2.0\n")
    assert Config.load(tmp_path)[some_threshold] == 2.0


@pytest.mark.parametrize("pair", ["no-such-rule.x=1", "nodot=1", "=3"])
def test_unknown_or_malformed_override_is_refused(pair):
    with pytest.raises(ConfigError):
        Config.load(ROOT, [pair])


def test_wrong_type_is_refused(some_threshold):
    with pytest.raises(ConfigError):
        Config.load(ROOT, [f"{some_threshold.name}=abc"])
    with pytest.raises(ConfigError):
        Config.load(ROOT, [f"{some_threshold.name}=nan"])


def test_values_outside_the_valid_range_are_refused():
    specs = all_thresholds()
    window, share = specs["exploding-gradient.window"], specs["gpu-idle.min_share"]
    for name, value in ((window.name, 0), (window.name, -5), (window.name, "1e300"), (share.name, 1.5)):
        with pytest.raises(ConfigError, match="out of range"):
            Config.load(ROOT, [f"{name}={value}"])
    assert Config.load(ROOT, [f"{share.name}=1"])[share] == 1.0  # both ends are valid


def test_broken_config_file_is_one_clear_error(tmp_path):
    (tmp_path / "tracemortem.toml").write_text("[oops\n")
    with pytest.raises(ConfigError, match="cannot read"):
        Config.load(tmp_path)
