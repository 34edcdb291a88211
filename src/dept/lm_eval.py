"""`python -m dept.lm_eval ...`: lm-evaluation-harness's own command line with the `dept` model
registered (the harness finds external models only once they are imported), e.g.

    python -m dept.lm_eval --model dept --model_args pretrained=smollm2-135m,adapter=RUN --tasks hellaswag

A mistake in the model args, or a task the harness cannot find, prints as one line (exit status 2), as
dept's own commands do.
"""

from __future__ import annotations

import sys
from typing import Optional

from dept._extras import requires
from dept.errors import UsageError


def main(argv: Optional[list[str]] = None) -> None:
    import dept.integrations.lm_eval  # noqa: F401  (registers --model dept; names the [hf] extra if lm-eval is missing)

    with requires("hf"):
        from lm_eval._cli import HarnessCLI
        from lm_eval.utils import setup_logging

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    setup_logging()
    parser = HarnessCLI()
    try:
        parser.execute(parser.parse_args())
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as err:  # the harness's own "Tasks not found: ..." is a user's mistake, not a crash
        if not str(err).startswith("Tasks not found"):
            raise
        print(
            f"error: {err}. A local task needs --include_path DIR (dept.integrations.lm_eval.write_task writes "
            "one); `--tasks list` names the harness's own.",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
