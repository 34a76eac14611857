"""scripts/build_image.py's pure parts: which pip settings and local paths `make image`
forwards into the build."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("build_image", ROOT / "scripts" / "build_image.py")
assert _spec and _spec.loader
build_image = importlib.util.module_from_spec(_spec)
sys.modules["build_image"] = build_image
_spec.loader.exec_module(build_image)

LISTED = """\
global.cert='/etc/ssl/certs/ca.crt'
global.find-links='/srv/wheels'
global.extra-index-url='file:///srv/pypi/simple file:///srv/pypi-more/simple https://mirror.example/simple'
:env:.find-links='/srv/wheels-env'
:env:.default-timeout='180'
"""


def test_the_environment_wins_over_files_and_quotes_are_dropped() -> None:
    settings = build_image.parse_pip_config_list(LISTED)
    assert settings["find-links"] == "/srv/wheels-env"
    assert settings["cert"] == "/etc/ssl/certs/ca.crt"
    assert settings["default-timeout"] == "180"


def test_a_file_index_brings_the_folder_its_relative_links_lead_to() -> None:
    assert build_image.local_paths("file:///srv/pypi/simple https://x/simple /a/b/") == \
        ["/srv/pypi", "/a/b"]


def test_only_existing_local_paths_are_mounted_once_and_not_inside_another() -> None:
    present = {"/etc/ssl/certs/ca.crt", "/srv/wheels-env", "/srv/pypi", "/srv/pypi/files"}
    fwd = build_image.pip_forward(LISTED + "global.constraint='/srv/pypi/files/c.txt'\n",
                                  exists=lambda p: p in present | {"/srv/pypi/files/c.txt"})
    assert fwd.mounts == ["/etc/ssl/certs/ca.crt", "/srv/pypi", "/srv/wheels-env"]
    assert fwd.names_sources
    text = fwd.config_text()
    assert text.startswith("[global]\n") and "find-links = /srv/wheels-env\n" in text


def test_no_configuration_forwards_nothing_and_torch_keeps_its_index() -> None:
    fwd = build_image.pip_forward("", exists=lambda p: True)
    assert not fwd.settings and not fwd.mounts and not fwd.names_sources
    only_cert = build_image.pip_forward("global.cert='/c.pem'\n", exists=lambda p: True)
    assert only_cert.mounts == ["/c.pem"] and not only_cert.names_sources
