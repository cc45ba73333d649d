"""The note above each machine's regressions list (scripts/site_regressions.py): the factor
of each kind of benchmark by asv's own rule over the suite's thresholds, every step listed
largest first in words and units, and what the `time_` benchmarks are worth."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import landing_html  # noqa: E402
import publish_site  # noqa: E402
import site_regressions  # noqa: E402

sys.path.pop(0)


def _regression(name: str, before: float, after: float) -> list:
    return [name, "graphs/x.json", {}, None, after, after, [[1, 2, before, after]]]


REVISIONS = {"1": "1" * 40, "2": "2" * 40}
THRESHOLDS = {"[^(]*\\.time_": 1.5, "bench_trace\\.Step\\.track_": 1.5}


def _index(*benchmarks: tuple[str, list[str], str]) -> dict:
    return {
        "revision_to_hash": REVISIONS,
        "benchmarks": {name: {"param_names": names, "unit": unit} for name, names, unit in benchmarks},
    }


def test_regression_thresholds_are_asvs_rule_over_the_suites_patterns():
    assert site_regressions.threshold_of(THRESHOLDS, "m.C.time_update_block_table") == 1.5
    assert site_regressions.threshold_of(THRESHOLDS, "bench_trace.Step.track_synced") == 1.5
    assert site_regressions.threshold_of(THRESHOLDS, "bench_trace.InverseSpeedup.track_synced") == 0.05
    conf = publish_site.load_conf(ROOT)["regressions_thresholds"]
    names = [
        "m.C.time_x",
        "bench_trace.RelativeStep.track_pipelined",
        "bench_trace.RelativeStep.track_pipelined_host_p99",
        "bench_trace.Step.track_pipelined",
    ]
    rule = site_regressions.thresholds_html(names, conf)
    for name in names:
        factor = 1 + site_regressions.threshold_of(conf, name)
        kind = site_regressions.kind(name)
        line = next(li for li in rule.split("<li>")[1:] if f"<code>{kind}</code>" in li)
        assert line.startswith(f"<b>{factor:.2f}x</b>")
    assert "<b>1.25x</b> (threshold 0.25): <code>bench_trace.RelativeStep.track_pipelined_host_p99</code>" in rule


def test_an_empty_regressions_page_says_no_regressions():
    index = _index(("a.RelativeTime.track", ["variant"], "t / ref"))
    note = site_regressions.regressions_note([], index, ["a.RelativeTime.track"], 9, THRESHOLDS)
    assert "No regressions" in note and "9 commits compared" in note
    assert "#regressions-body { display: none; }" in note  # no empty table
    assert "<b>1.05x</b> (threshold 0.05): <code>a.RelativeTime</code>" in note
    assert "nothing to compare yet" in site_regressions.regressions_note([], index, [], 1, THRESHOLDS)


def test_regressions_are_listed_largest_first_in_their_units():
    name = "bench_pipelined.InverseSpeedup.track_pipelined"
    index = _index((name, ["variant", "batch_size", "context"], "variant time / cpu-bs16 time, lower is better"))
    listed = [
        _regression(f"{name}('gpu-bs16', 16, 1024)", 1.0, 1.1),
        [f"{name}('gpu-bs1', 1024, 65536)", "g", {}, None, 1.013, 0.4116, [[None, 2, 0.4116, 1.013]]],
    ]
    note = site_regressions.regressions_note(listed, index, [name], 6, THRESHOLDS)
    items = note.split('<ol id="disagmoe-regressions-list">', 1)[1].split("</ol>", 1)[0].split("<li ")[1:]
    assert len(items) == 2 and "<b>2 regressions</b>" in note
    assert "<b>2.46x</b> higher at commit <code>2222222</code>" in items[0]
    assert "variant gpu-bs1, batch_size 1024, context 64K: 0.412 &rarr; 1.01 variant time / cpu-bs16 time" in items[0]
    assert "<b>1.10x</b> higher at commit <code>2222222</code> (after <code>1111111</code>)" in items[1]
    assert "Read with care" not in note  # no time_ benchmark listed


def test_regressions_of_time_benchmarks_name_what_to_read_instead():
    timed = [
        _regression("m.C.time_update_block_table('cpu', 16, 256)", 1.0, 1.95),
        _regression("m.C.time_pack_flash_attn_metadata('gpu', 16, 128)", 2.0, 3.0),
    ]
    steady = ["bench_relative.RelativeTime.track_update_block_table", "bench_trace.RelativeStep.track_pipelined"]
    index = _index()
    note = site_regressions.regressions_note(timed, index, steady + ["m.C.time_update_block_table"], 9, THRESHOLDS)
    assert "all of them are of <code>time_</code> benchmarks (factor 1.50-1.95x)" in note
    assert all(f'href="#{name}"' in note for name in steady) and 'href="#m.C.time_' not in note
    mixed = timed + [_regression("bench_relative.RelativeTime.track_update_block_table('cpu', 16, 256)", 1.0, 2.0)]
    assert "2 of the 3 are" in site_regressions.regressions_note(mixed, index, steady, 9, THRESHOLDS)
    assert "Read with care" not in site_regressions.regressions_note(mixed[2:], index, steady, 9, THRESHOLDS)


def test_the_landing_page_says_what_each_machines_verdicts_can_see():
    """The suite's SENSITIVITY, per machine: the identical commit's move (the minimum
    detectable change) of the medians and of the tail, or "not measured yet"."""
    sensitivity = publish_site.verdict_sensitivity(ROOT)
    assert sensitivity and any(run is None for run in sensitivity.values())
    section = landing_html.sensitivity_section(sensitivity)
    for machine, run in sensitivity.items():
        item = next(li for li in section.split("<li>")[1:] if li.startswith(f"<b>{machine}</b>"))
        if run is None:
            assert "not measured yet" in item
            continue
        identical = {name: mdc["identical"] for name, mdc in run["mdc"].items()}
        median = max(v for n, v in identical.items() if not n.endswith("_p99"))
        tail = max(v for n, v in identical.items() if n.endswith("_p99"))
        assert f"medians {median * 100:.0f}%, tail {tail * 100:.0f}%" in item and run["commit"] in item
    page = landing_html.page([], [], None, (), sensitivity)
    assert '<section id="sensitivity">' in page
    assert landing_html.sensitivity_section({}) == "" and 'id="sensitivity"' not in landing_html.page([], [], None)
