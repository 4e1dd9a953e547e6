"""Every command line in the README's shell blocks parses with the current parsers and names
a registered benchmark and model (nothing is run)."""

import argparse
import pathlib
import re
import shlex

import pytest

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
LINES = [
    line.split("  #", 1)[0].strip()
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]
COMMANDS = [line for line in LINES if re.match(r"(graphseq|torchrun|python -m graphseq)\b", line)]


class _Parsed(Exception):
    pass


def _argv(line: str) -> tuple[str, list[str]]:
    words = shlex.split(line)
    if words[0] == "torchrun":
        words = ["python", *words[words.index("-m") :]]
    if words[0] == "graphseq":
        return "graphseq.cli", words[1:]
    assert words[:2] == ["python", "-m"], line
    return words[2], words[3:]


def test_readme_has_commands():
    assert any(c.startswith("graphseq run") for c in COMMANDS)


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_parses(line, monkeypatch):
    module, argv = _argv(line)
    if module == "graphseq.cli":
        from graphseq.cli import _parser
        from graphseq.models import get_model
        from graphseq.train.benchmarks import get_benchmark

        args = _parser().parse_args(argv)  # SystemExit(2) on a bad flag
        if args.command in ("run", "submit"):
            get_benchmark(args.benchmark)
            get_model(args.model)
        return
    assert module == "graphseq.kernels.bench", line
    from graphseq.kernels import bench

    def stop(self, args=None, namespace=None):
        argparse.ArgumentParser.parse_known_args(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    with pytest.raises(_Parsed):
        bench.main(argv)
