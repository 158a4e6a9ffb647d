"""The lines `kyma serve` prints for whoever started it ("… listening on …", "kyma serving on …").

The workers inherit their parent's stdout, so several processes write these lines into one
pipe, and whoever reads it (an operator's script, the bench, the tests) acts on whole lines.
`print` writes the text and its newline in two calls when the stream is unbuffered
(PYTHONUNBUFFERED or `-u`), so two cores starting together could produce
"kyma core listening on …:1234kyma core listening on …:5678" and an empty line. One write of
the whole line is atomic on a pipe (it is far below PIPE_BUF).
"""

from __future__ import annotations

import sys


def print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
