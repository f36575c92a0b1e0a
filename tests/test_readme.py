"""The README's module example runs exactly as written."""

import os
import pathlib
import re
import shlex
import sys


def test_readme_module_example_runs(capsys):
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Use the modules in your own JAX project", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (the README's own example)
    assert capsys.readouterr().out.strip().endswith("(2, 15, 8, 256)")


def test_readme_snippets_run_outside_the_repo(tmp_path):
    """The README's Python snippets run from a folder outside the repo with only the package on
    the path (as `pip install .` leaves it: no top-level `configs`). The SlowFast snippet runs up
    to its `load_component` line, which needs a converted checkpoint."""
    import subprocess

    text = (REPO / "README.md").read_text()
    section = text.split("## Use the modules in your own JAX project", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(snippets) == 2 and all("from jovale_jax.configs import" in s for s in snippets)
    site = tmp_path / "site"
    site.mkdir()
    (site / "jovale_jax").symlink_to(REPO / "jovale_jax")
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )

    assert "No module named 'configs'" in run("import configs").stderr  # not on the path here
    slowfast = snippets[1].split("load_component(encoder")[0] + "print(cfg.num_frames)"
    for code, last in ((snippets[0], "(2, 15, 8, 256)"), (slowfast, "16")):
        done = run(code)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().endswith(last)


def test_readme_shows_both_setup_commands():
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    assert "make demo" in text and "make test" in text


REPO = pathlib.Path(__file__).resolve().parent.parent
# What the placeholders of the README's command table stand for.
PLACEHOLDERS = {
    "C": "configs/synthetic.py:test",
    "W": "runs/w",
    "RAW": "raw",
    "OUT": "out",
    "NAME": "synthetic",
    "FILE": "clip.mp4",
    "DIR": "out",
    "CSV": "boxes.csv",
    "MODEL": "facebook/detr-resnet-50",
    "F.mp4": "annotated.mp4",
    "KIND": "hf_ast",
    "PATH": "weights/ast",
    "MODEL,": "m",
}


def shown_commands() -> list[tuple[str, str]]:
    """(where, command) for every `python launch.py ...` in the README (code blocks and the
    command table), bench/README.md, the presets' docstrings and the package's docstrings, with
    continuation lines joined."""
    sources = [
        REPO / "README.md",
        REPO / "bench" / "README.md",
        *sorted(REPO.glob("configs/*.py")),
        *sorted(REPO.glob("jovale_jax/**/*.py")),
    ]
    found = []
    for path in sources:
        text = re.sub(r"\\\n\s*", "", path.read_text())
        # Markdown: code-block lines and `...` spans; Python: the usage lines of docstrings.
        pattern = (
            r"(?:^|`)\s*(?:\w+=\S+ )?(python launch\.py [^`]*)"
            if path.suffix == ".md"
            else r"^\s+(python launch\.py .*)$"
        )
        for line in text.splitlines():
            for command in re.findall(pattern, line):
                found.append((f"{path.relative_to(REPO)}: {line.strip()[:60]}", command.strip()))
    return found


def as_argv(command: str) -> list[list[str]]:
    """The command's argument lists: placeholders filled in, optional parts `[...]` taken (the
    first of `a | b`), one list per alternative of `{a,b}`; `[...]` alone is dropped."""
    command = command.replace("\\|", "|").replace("[...]", "")
    command = re.sub(r"configs/NAME\.py\[:variant\]", "configs/synthetic.py", command)
    command = re.sub(r"\[([^\[\]|]*)\|[^\[\]]*\]", r"\1", command)
    command = re.sub(r"\[([^\[\]]*)\]", r"\1", command)
    choices = re.search(r"\{([\w,-]+)\}", command)
    variants = (
        [command.replace(choices.group(0), c) for c in choices.group(1).split(",")]
        if choices
        else [command]
    )
    return [[PLACEHOLDERS.get(word, word) for word in shlex.split(v)[2:]] for v in variants]


def test_every_shown_command_parses(monkeypatch):
    """Each command is parsed by launch.py's own flags and command check, its config loaded (for
    build-data: the dataset's preset when no --config is given). Running them is the work of
    the tests of each command."""
    from absl import flags

    import launch

    commands = shown_commands()
    assert len(commands) >= 20
    assert any(
        "build-data --dataset synthetic --data_dir runs/data/synthetic" in c for _, c in commands
    )
    for where, command in commands:
        for argv in as_argv(command):
            reset_flags()
            monkeypatch.setattr(sys, "argv", ["launch.py", *argv])  # config_flags reads it
            try:
                rest = flags.FLAGS(sys.argv)
                launch.check_command(rest)
                if rest[1] == "build-data":
                    assert launch.build_data_config().dataset == flags.FLAGS.dataset
                elif rest[1:] not in (["demo"], ["bench", "eval"]):  # these need no config
                    assert flags.FLAGS.config is not None
            except Exception as e:
                raise AssertionError(f"{where}: {' '.join(argv)}: {e}") from e
    reset_flags()


def test_every_shown_command_is_valid_bash():
    """Each command pastes into bash as written (a tuple value quoted: `"--config.x=(1,2)"`)."""
    import subprocess

    for where, command in shown_commands():
        run = subprocess.run(
            ["bash", "-n"], input=command, text=True, capture_output=True, check=False
        )
        assert run.returncode == 0, f"{where}: {command}: {run.stderr.strip()}"


def test_every_converter_kind_is_documented():
    """Each `--from` kind appears in the README's table of pretrained weights and in convert's
    --from help; every Markdown file the README names exists in the repo."""
    from absl import flags

    import launch  # noqa: F401 (defines the flags)
    from jovale_jax.convert.io import SOURCES

    text = (REPO / "README.md").read_text()
    table = text.split("## Pretrained weights", 1)[1].split("```", 1)[0]
    for kind in SOURCES:
        assert f"`{kind}`" in table, kind
        assert kind in flags.FLAGS["from"].help, kind
    for name in set(re.findall(r"\b[\w/]+\.md\b", text)) - {"README.md"}:
        if not name.startswith(("runs/", "W/")):  # what commands write
            assert (REPO / name).exists(), name


def reset_flags():
    """launch.py's flags unparsed, without the `--config.x` overrides the last parse defined."""
    from absl import flags

    for name in [n for n in flags.FLAGS if n.startswith(("config.", "compare_config."))]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
