"""`python -m dept.bench ...` = `dept bench ...`."""

import typer

from dept.bench.cli import bench_command

typer.run(bench_command)
