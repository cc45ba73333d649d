"""Which design wins where, one answer from one source: the README's summary, the first section
of docs/performance.md and the landing page's summary are what scripts/answer.py makes of the
committed results, and they say the same; each machine's lines name its card, the commit, its
date and the lag. Also the generator on results it has never seen (unknown benchmarks, a machine
without maps, a card recorded in full)."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import answer  # noqa: E402
import landing  # noqa: E402
import publish_site  # noqa: E402

sys.path.pop(0)

HAS_HISTORY = answer.git(ROOT, "rev-parse", "--verify", "-q", "HEAD~1") is not None
needs_history = pytest.mark.skipif(not HAS_HISTORY, reason="answer: this tree is not a git clone with history")
HEADER = re.compile(
    r"^(?P<machine>\S+): results of commit (?P<commit>[0-9a-f]{7}) of (?P<date>\d{4}-\d{2}-\d{2})"
    r"(, measured [0-9: -]+ UTC)?, (?P<lag>\d+) commits? behind (?P<reference>[0-9a-f]{7}), the last commit "
    r"that changed the measured code; card (?P=machine) \(the asv machine name\)(; .+)?\.$"
)


def _between_markers(name: str) -> tuple[str, str]:
    """(the reference the markers name, the text between them) of a committed file."""
    with open(os.path.join(ROOT, name)) as f:
        text = f.read()
    begin = answer.BEGIN.search(text)
    assert begin is not None, f"{name}: no answer markers"
    return begin.group(1), text[begin.end() : text.index(answer.END, begin.end())]


def _bullets(text: str) -> list[str]:
    """The summary's lines: the leading run of '- ' lines."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("- "):
            break
        lines.append(line[2:])
    return lines


@needs_history
@pytest.mark.parametrize("name", [name for name, _ in answer.DOCS])
def test_committed_text_is_what_the_script_makes_of_the_committed_results(name):
    reference, _ = _between_markers(name)
    full = answer.git(ROOT, "rev-parse", "--verify", "-q", f"{reference}^{{commit}}")
    assert full is not None, f"{name}: the markers name {reference}, which is not a commit of this clone"
    with open(os.path.join(ROOT, name)) as f:
        committed = f.read()
    assert answer.render(ROOT, name, full) == committed, (
        f"{name} differs from what scripts/answer.py makes of the committed results: "
        "run `python3 scripts/answer.py` and commit the result"
    )


@needs_history
def test_readme_docs_and_landing_page_say_the_same(tmp_path):
    reference, readme = _between_markers("README.md")
    docs_reference, docs = _between_markers("docs/performance.md")
    assert reference == docs_reference
    lines = _bullets(readme)
    assert lines and _bullets(docs) == lines
    results = os.path.join(ROOT, "results")
    committed = [m for m in publish_site.find_machines(ROOT, results) if m.num_in_git]
    full = answer.git(ROOT, "rev-parse", f"{reference}^{{commit}}")
    publish_site.write_landing(results, str(tmp_path), committed, full)
    page = (tmp_path / "index.html").read_text()
    section = page.split('<section id="answer">', 1)[1].split("</ul>", 1)[0]
    shown = [html.unescape(item.split("</li>", 1)[0]) for item in section.split("<li>")[1:]]
    if any(m.num_local for m in committed):
        pytest.skip("this clone holds results that git does not: its landing page shows them")
    assert shown == lines


@needs_history
def test_each_machine_names_its_card_commit_date_and_lag():
    reference, readme = _between_markers("README.md")
    headers = [line for line in _bullets(readme) if " results of commit " in line]
    machines = {m.name for m in publish_site.find_machines(ROOT, os.path.join(ROOT, "results")) if m.on_cuda}
    assert {line.split(":", 1)[0] for line in headers} == machines
    for line in headers:
        found = HEADER.match(line)
        assert found, line
        assert found["reference"] == reference[:7]
        count = answer.git(ROOT, "rev-list", "--count", f"{found['commit']}..{reference}")
        assert int(found["lag"]) == int(count)
        assert "not recorded in its results" in line or "model " in line


@needs_history
def test_the_lag_is_counted_in_commits_between_the_two():
    head = answer.git(ROOT, "rev-parse", "HEAD")
    assert answer.lag(ROOT, head, head) == 0
    assert answer.lag(ROOT, answer.git(ROOT, "rev-parse", "HEAD~1"), head) >= 1
    assert answer.lag(ROOT, "0" * 40, head) is None
    assert answer.lag(ROOT, head, None) is None


COLUMNS = ["result", "params", "version", "started_at", "duration"]


def _entry(values: list, *params: list[str]) -> list:
    return [values, [list(p) for p in params], "v", 1796166127000, 1.0]


def _results(tmp_path, machine: dict, results: dict) -> str:
    folder = tmp_path / "results" / machine["machine"]
    folder.mkdir(parents=True)
    (folder / "machine.json").write_text(json.dumps(machine))
    data = {
        "commit_hash": "ab" * 20,
        "date": 1796166000000,
        "params": {"machine": machine["machine"], "python": "3.12"},
        "requirements": {},
        "result_columns": COLUMNS,
        "results": {"bench_memory.Device.track_on_cuda": _entry([1]), **results},
    }
    path = folder / ("abababab-env.json")
    path.write_text(json.dumps(data))
    return str(path)


VARIANTS = ["'cpu-bs16'", "'gpu-bs16'", "'hybrid-bs16'"]


def test_unknown_benchmarks_a_missing_map_and_a_recorded_card(tmp_path):
    machine = {"machine": "gpu-y", "version": 1, "gpu": "NVIDIA H200", "driver": "580.1"}
    trace = _entry([100.0, 200.0, 50.0, 90.0, 52.0, 95.0], VARIANTS, ["64"], ["2048", "65536"])
    unknown = _entry([1.0, 2.0], ["'a'", "'b'"])
    path = _results(
        tmp_path, machine, {"bench_trace.Step.track_pipelined": trace, "bench_new.Thing.track_tail": unknown}
    )
    run = landing.read_run(path, "gpu-y")
    found = answer.answer_of(ROOT, run, answer.read_card(path, "gpu-y"), None)
    header, sentence = found.lines
    assert header.startswith("gpu-y: results of commit abababa of 2026-")
    assert "lag unknown (this clone has no history of the measured code)" in header
    assert header.endswith(
        "card gpu-y (the asv machine name); model NVIDIA H200; driver 580.1; torch, CUDA: not recorded in its results."
    )
    assert sentence == (
        "On gpu-y, pipelined (wall time per step, steps back to back): gpu-bs16 wins 2 of 2 trace cells "
        "(R 64, P 2K, near tie: hybrid-bs16 1.04x; R 64, P 64K, near tie: hybrid-bs16 1.06x); "
        "cpu-bs16 wins no cell; hybrid-bs16 wins no cell."
    )


def test_a_machine_without_serving_results_says_so_in_one_line(tmp_path):
    path = _results(tmp_path, {"machine": "gpu-z", "version": 1}, {})
    run = landing.read_run(path, "gpu-z")
    header, sentence = answer.answer_of(ROOT, run, answer.read_card(path, "gpu-z"), None).lines
    assert "model, driver, torch, CUDA: not recorded in its results" in header
    assert sentence.startswith("gpu-z has no serving results: its latest results time the operations alone")


def test_markers_are_required_and_name_the_reference():
    with pytest.raises(ValueError, match="README.md: no answer markers"):
        answer.fill("no markers here\n", "- x\n", "a" * 40, "README.md")
    text = "a\n" + answer.MARKER.format("0" * 7) + "old\n" + answer.END + "\nb\n"
    filled = answer.fill(text, "- new\n", "f" * 40, "X.md")
    assert filled == "a\n" + answer.MARKER.format("f" * 12) + "- new\n" + answer.END + "\nb\n"
    assert answer.named_reference(filled, "X.md") == "f" * 12


@needs_history
def test_check_mode_finds_the_committed_text_current():
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "answer.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_machine_with_replays_alone_names_their_winners(tmp_path):
    """Results of the production traces without the maps (a machine that lacks some serving
    benchmarks): no map measured, the traces' winners still named."""
    replay = _entry([30.0, 40.0, 20.0, 45.0], ["'cpu-bs16'", "'gpu-bs16'"], ["'azure-conv'", "'mooncake'"])
    path = _results(tmp_path, {"machine": "gpu-r", "version": 1}, {"bench_replay.Step.track_pipelined": replay})
    run = landing.read_run(path, "gpu-r")
    sentence = answer.answer_of(ROOT, run, answer.read_card(path, "gpu-r"), None).sentence
    assert sentence == (
        "On gpu-r, pipelined (wall time per step, steps back to back): no map measured; "
        "on the production traces, cpu-bs16 wins mooncake, gpu-bs16 wins azure-conv."
    )
