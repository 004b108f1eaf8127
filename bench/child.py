"""Entry of a measured child process: `python -m bench.child <module> <args...>` runs
`<module>` as `__main__` with pandas and NumPy kept out, as `sentinel up` keeps them out of
its process (`cli.LONG_LIVED`). They must be kept out before anything imports pyarrow, which
imports them when they are installed (the dev extra installs pandas): a bench module that
imports `crypto_sentinel` at its top would otherwise measure ~55 MB that `sentinel up` never
holds (docs/benchmarks.md, session 21)."""

from __future__ import annotations

import runpy
import sys

from crypto_sentinel.eventloop import keep_analysis_libraries_out

if __name__ == "__main__":
    keep_analysis_libraries_out()
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
