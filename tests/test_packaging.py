"""What pyproject.toml promises about the installation: TensorFlow only ever as an extra."""

import re
import tomllib

from helpers import REPO_ROOT


def _names(requirements: list[str]) -> set[str]:
    """The distribution names of PEP 508 requirement strings."""
    return {
        re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
        for requirement in requirements
    }


def test_tensorflow_is_an_extra_never_a_core_dependency():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    core = _names(project["dependencies"])
    assert "tensorflow-datasets" in core  # imports TensorFlow lazily: the grain path runs without
    assert not core & {"tensorflow", "tensorflow-cpu", "tf-nightly", "keras"}
    assert _names(project["optional-dependencies"]["tf"]) == {"tensorflow-cpu"}
