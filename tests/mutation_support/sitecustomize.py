"""Imported by every Python subprocess a test starts while scripts/mutation runs (never otherwise).

Many tests run our CLIs as subprocesses, the way users do. mutmut only sees the functions a test
calls in its own process, so without this every function reached only through a CLI would count as
"no tests" and never be mutated for real. tests/mutation_support/plugin.py puts this folder and
mutmut's mutated copy of `src/` on the subprocesses' PYTHONPATH, so:

* while mutmut collects which tests reach which function (MUTANT_UNDER_TEST=stats), a subprocess
  writes the functions it entered to $THEORY_MUTATION_HITS/<pid>.hits at exit, and the plugin adds
  them to the test that started it;
* while a mutant is tested, the subprocess inherits MUTANT_UNDER_TEST and runs that mutant.
"""

from __future__ import annotations

import atexit
import os


def _record_hits_at_exit(project_root: str, hits_dir: str) -> None:
    from mutmut import configuration
    from mutmut.state import state

    # mutmut reads its configuration from the current directory on first use; a CLI subprocess
    # may run anywhere, so load it from the project now.
    here = os.getcwd()
    os.chdir(project_root)
    try:
        configuration.config()
    finally:
        os.chdir(here)

    def dump() -> None:
        hits = state()._stats
        if not hits:
            return
        path = os.path.join(hits_dir, f"{os.getpid()}.hits")
        with open(f"{path}.tmp", "w") as out:
            out.write("\n".join(sorted(hits)))
        os.replace(f"{path}.tmp", path)

    atexit.register(dump)


if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("THEORY_MUTATION_HITS"):
    _record_hits_at_exit(os.environ["THEORY_MUTATION_ROOT"], os.environ["THEORY_MUTATION_HITS"])
