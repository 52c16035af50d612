"""The committed generated modules must be exactly what `python -m xdm.codegen` produces now."""

from pathlib import Path

from xdm.codegen import REPO_ROOT, generate


def test_generated_code_is_current(tmp_path: Path):
    fresh = generate(tmp_path)
    assert fresh, "codegen produced no files"
    for path in fresh:
        committed = REPO_ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run python -m xdm.codegen"
        assert committed.read_text() == path.read_text(), f"{committed} is stale or edited: run python -m xdm.codegen"


def test_proto_folder_is_not_a_python_package():
    # `proto` is the top-level module of the proto-plus package; ours must never shadow it.
    assert not (REPO_ROOT / "proto" / "__init__.py").exists()
    assert not (REPO_ROOT / "proto" / "xdm" / "__init__.py").exists()
