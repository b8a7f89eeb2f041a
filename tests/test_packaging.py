"""pyproject lists every subpackage, so installs are complete."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "workbench").rglob("__init__.py")}
    assert found == listed
    # No top-level package of the repository may share a name with an installed distribution: with the
    # checkout on sys.path (`python -m ...` from its root) it would shadow it. A top-level `kernels/`
    # did: transformers >= 5.25 imports Hugging Face's `kernels` package and got ours.
    assert not [p for p in REPO.glob("*/__init__.py") if p.parent.name != "workbench"]


def test_build_model_seed_gives_identical_weights():
    import torch
    from conftest import TINY_CONFIGS

    from workbench.architectures import build_model, model_config

    for arch, tiny in TINY_CONFIGS.items():
        cfg = model_config(arch, 20, 12, seed=5, **tiny)
        a, b = build_model(cfg).state_dict(), build_model(cfg).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), arch
