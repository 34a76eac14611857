from __future__ import annotations

from pathlib import Path

import pytest

from funnel.contracts.errors import ConfigError
from training.config import load_config, profile_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def _tiny_text() -> str:
    return (Path(__file__).parents[3] / "training/configs/tiny.yaml").read_text()


@pytest.mark.parametrize("profile", ["tiny", "demo", "large"])
def test_shipped_profiles_parse(profile: str) -> None:
    assert profile_config(profile).retrieval.num_samples >= 1


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"learning_rat: unknown key"):
        load_config(_write(tmp_path, _tiny_text() + "learning_rat: 3\n"))


def test_unknown_param_lists_allowed(tmp_path: Path) -> None:
    text = _tiny_text().replace("    temperature: 0.1\n", "    temprature: 0.1\n")
    with pytest.raises(ConfigError, match=r"retrieval.params: unknown key\(s\) \['temprature'\]"):
        load_config(_write(tmp_path, text))


def test_out_of_range_value_names_field_and_range(tmp_path: Path) -> None:
    text = _tiny_text().replace("    dropout: 0.1\n", "    dropout: 1.5\n", 1)
    with pytest.raises(ConfigError, match=r"retrieval.params.dropout: 1.5 is out of range; "
                                          r"allowed: 0.0..0.9"):
        load_config(_write(tmp_path, text))


def test_bad_distribution_bounds(tmp_path: Path) -> None:
    text = _tiny_text().replace("lr: {choice: [0.003, 0.01]}", "lr: {loguniform: [0.1, 0.01]}")
    with pytest.raises(ConfigError, match=r"low 0.1 must be < high 0.01"):
        load_config(_write(tmp_path, text))


def test_negative_samples_rejected(tmp_path: Path) -> None:
    text = _tiny_text().replace("num_samples: 2", "num_samples: 0", 1)
    with pytest.raises(ConfigError, match=r"num_samples: Input should be greater than or equal"):
        load_config(_write(tmp_path, text))


def test_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "a: [unclosed\n"))


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match=r"profile: 'huge' is not allowed"):
        profile_config("huge")


def test_ranker_dense_features_are_a_known_subset(tmp_path: Path) -> None:
    ok = load_config(_write(tmp_path, _tiny_text()
                            + "ranker_dense_features: [retrieval_score, post_ctr]\n"))
    assert ok.ranker_dense_features == ["retrieval_score", "post_ctr"]
    assert profile_config("tiny").ranker_dense_features is None  # all of them
    with pytest.raises(ConfigError, match=r"ranker_dense_features.*'post_ctrr'"):
        load_config(_write(tmp_path, _tiny_text()
                           + "ranker_dense_features: [retrieval_score, post_ctrr]\n"))
