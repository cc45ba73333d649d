"""The fuzz target: hostile calls into the public API and into the native steps and books
the managers run, each case in a child process so that a crash or a hang is caught and
reported, not suffered.

- `cases.py`: hypothesis strategies of cases, as plain data (so a failing case prints
  as something to paste back): a manager's configuration and a list of operations whose
  arguments may be hostile (see tests/hostile.py), or a manager and a list of direct calls
  into its `_C.HostStep` / `_C.DeviceStep` and books.
- `worker.py`: the child. It builds each case's objects, runs the operations against the
  reference model and says what went wrong, if anything.
- `runner.py`: the parent's side: one worker at a time, restarted after a crash or a hang.

tests/test_fuzz.py drives it for DISAGMOE_FUZZ_SECONDS (10 by default; CI gives it more,
and scripts/sanitize.sh runs it against the sanitizer build).
"""
