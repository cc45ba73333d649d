"""Publishes asv's HTML site: one site per machine, each working with no network.

`asv publish` draws every machine of results/ in one site: a CPU machine's run becomes
the last point of every graph of the GPU history, on one scale, and the lists default
to whichever machine comes first. This script runs `asv publish` once per machine
instead, each on a copy of results/ that holds that machine alone, so every site
shows one machine's history on its own scale, and writes a landing page above them:

    .asv/html/index.html          which design wins where: the crossover maps of each GPU
                                  machine's latest results (scripts/landing.py)
    .asv/html/machines/<name>/    each machine's asv site (the GPU histories kept in git,
                                  a CPU machine's runs, not in git)

An address of asv's page that used to be the front page (index.html#<benchmark>...) opens
the first GPU machine's site. Each page names its machine, links to the landing page and
the other machines and says which way the ratios go;
the libraries asv loads from CDNs are copied into each site (scripts/site_libs.py).
Open it with `asv preview` (http://127.0.0.1:8080) or any local web server of
.asv/html; docs/site.md says more.

    python3 scripts/publish_site.py                      # publish
    python3 scripts/publish_site.py --libs DIR           # the libraries from DIR
    python3 scripts/publish_site.py --fill-libs .sitelibs  # fill a folder to carry
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

import answer
import landing
import landing_html
import site_labels
import site_libs
import site_regressions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB_CANDIDATES = [os.environ.get("DISAGMOE_SITELIBS", ""), ".sitelibs", "node_modules"]
# machine.json fields besides the name: asv shows each as a filter on every graph
MACHINE_INFO = ("arch", "cpu", "num_cpu", "os", "ram")


def _commits(num: int) -> str:
    return f"{num} commit" if num == 1 else f"{num} commits"


@dataclasses.dataclass
class Machine:
    name: str
    num_in_git: int  # results files of this machine that git tracks
    num_local: int  # the others: runs of this clone
    on_cuda: bool  # one of them ran on CUDA (landing.ran_on_cuda)

    @property
    def label(self) -> str:
        parts = ["GPU" if self.on_cuda else "no CUDA: the gpu design on torch's CPU device"]
        if self.num_in_git:
            parts.append(f"history in git, {_commits(self.num_in_git)}")
        if self.num_local:
            parts.append(f"{_commits(self.num_local)} measured in this clone, not in git")
        return "; ".join(parts)


def load_conf(root: str) -> dict:
    """asv.conf.json, whose comments are whole lines starting with //."""
    with open(os.path.join(root, "asv.conf.json")) as f:
        return json.loads("".join(line for line in f if not line.lstrip().startswith("//")))


def tracked_files(root: str, folder: str) -> set[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--", folder], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {os.path.join(root, line) for line in out.splitlines()}


def ran_on_cuda(path: str) -> bool:
    with open(path) as f:
        return landing.ran_on_cuda(landing.entries_of(json.load(f)))


def find_machines(root: str, results: str) -> list[Machine]:
    """Machines with results: GPU machines first, then those with results in git."""
    machines = []
    for name in sorted(os.listdir(results)):
        folder = os.path.join(results, name)
        if not os.path.exists(os.path.join(folder, "machine.json")):
            continue
        files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json") and f != "machine.json"]
        if not files:
            continue
        tracked = tracked_files(root, os.path.relpath(folder, root))
        in_git = sum(f in tracked for f in files)
        machines.append(Machine(name, in_git, len(files) - in_git, any(ran_on_cuda(f) for f in files)))
    return sorted(machines, key=lambda m: (not m.on_cuda, m.num_in_git == 0, m.name))


def without_machine_info(data: dict) -> dict:
    data = dict(data)
    if isinstance(data.get("params"), dict):
        data["params"] = {k: v for k, v in data["params"].items() if k not in MACHINE_INFO}
    return {k: v for k, v in data.items() if k not in MACHINE_INFO}


def stage_results(results: str, machine: str, staged: str) -> None:
    """A results folder holding `machine` alone, its machine fields reduced to the name, and
    the suite's description of only the benchmarks it measured (asv draws a tile, blank,
    for every benchmark described)."""
    os.makedirs(os.path.join(staged, machine))
    measured: set[str] = set()
    for name in os.listdir(os.path.join(results, machine)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(results, machine, name)) as f:
            data = without_machine_info(json.load(f))
        if name != "machine.json":
            measured.update(n for n, e in landing.entries_of(data).items() if landing.has_value(e))
        with open(os.path.join(staged, machine, name), "w") as f:
            json.dump(data, f)
    with open(os.path.join(results, "benchmarks.json")) as f:
        suite = json.load(f)
    with open(os.path.join(staged, "benchmarks.json"), "w") as f:
        json.dump({k: v for k, v in suite.items() if k == "version" or k in measured}, f)


def existing_branch(root: str, branch: str) -> str:
    """`branch`, else its remote-tracking branch, else HEAD: asv publish walks the branch's
    commits and fails on a name the clone does not have (a clone of another branch)."""
    for name in (branch, f"origin/{branch}"):
        if (
            subprocess.run(
                ["git", "rev-parse", "--verify", "-q", name + "^{commit}"], cwd=root, capture_output=True
            ).returncode
            == 0
        ):
            return name
    return "HEAD"


def asv_publish(root: str, conf: dict, machine: str, staged: str, html_dir: str, build: str) -> None:
    paths = {key: os.path.join(root, conf[key]) for key in ("benchmark_dir", "env_dir")}
    derived = {k: v for k, v in conf.items() if k != "plugins"}  # the plugin matters to runs only
    derived.update(
        paths,
        repo=root,
        results_dir=staged,
        html_dir=html_dir,
        project=f"disagmoe on {machine}",
        branches=[existing_branch(root, b) for b in conf.get("branches", ["main"])],
    )
    config = os.path.join(build, "asv.conf.json")
    with open(config, "w") as f:
        json.dump(derived, f, indent=1)
    cmd = [sys.executable, "-m", "asv", "publish", "--no-pull", "--config", config]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"publish_site: asv publish of {machine} failed (exit code {done.returncode})")


def site_dir(html_dir: str, machine: Machine) -> str:
    return os.path.join(html_dir, "machines", machine.name)


def footer(html_dir: str, machines: list[Machine], here: Machine) -> str:
    here_dir = site_dir(html_dir, here)
    others = [
        (os.path.relpath(site_dir(html_dir, m), here_dir) + "/index.html", m.name, m.label)
        for m in machines
        if m is not here
    ]
    front = os.path.relpath(os.path.join(html_dir, "index.html"), here_dir)
    return site_labels.footer(here.name, here.label, others, front)


def verdict_sensitivity(root: str) -> dict[str, dict | None]:
    """benchmarks/verdict_set.py's SENSITIVITY (plain data, read without importing the suite's
    package); empty where a checkout predates it."""
    path = os.path.join(root, "benchmarks", "verdict_set.py")
    if not os.path.exists(path):
        return {}
    spec = importlib.util.spec_from_file_location("_verdict_set", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(getattr(module, "SENSITIVITY", {}))


def write_landing(results: str, html_dir: str, machines: list[Machine], reference: str | None = None) -> None:
    """The landing page, html_dir/index.html: where each design wins (scripts/answer.py, the
    lag counted to `reference`, by default the last commit of HEAD that changed the measured
    code), the maps of every GPU machine's latest results (scripts/landing.py), links to
    every machine's site."""
    entries, others, found = [], [], []
    reference = reference or answer.code_commit(ROOT)
    for m in machines:
        folder = os.path.join(results, m.name)
        href = os.path.relpath(site_dir(html_dir, m), html_dir) + "/index.html"
        choice = landing.choose(landing.results_files(folder), tracked_files(ROOT, os.path.relpath(folder, ROOT)))
        if not m.on_cuda or choice is None:
            others.append(landing_html.MachineEntry(m.name, m.label, href, None))
            continue
        shown = os.path.join(os.path.basename(results), m.name, os.path.basename(choice.path))
        run = landing.read_run(choice.path, m.name, shown)
        entries.append(landing_html.MachineEntry(m.name, m.label, href, run, choice.in_git, choice.newer_not_in_git))
        found.append(answer.answer_of(ROOT, run, answer.read_card(choice.path, m.name), reference))
    entries.sort(key=lambda e: answer.order(e.run))
    lines = tuple(line for a in sorted(found, key=lambda a: answer.order(a.run)) for line in a.lines)
    old_front = os.path.relpath(site_dir(html_dir, machines[0]), html_dir) + "/index.html"
    with open(os.path.join(html_dir, "index.html"), "w") as f:
        f.write(landing_html.page(entries, others, old_front, lines, verdict_sensitivity(ROOT)))


def find_libs(explicit: str | None) -> str | None:
    try:
        return site_libs.find_folder(ROOT, [explicit] if explicit else [c for c in LIB_CANDIDATES if c])
    except site_libs.LibsMissing as err:
        print(
            f"publish_site: WARNING: {err}.\n  The site loads its libraries from CDNs and is blank without "
            "the internet. `npm ci` installs them; on a machine without npm carry a folder filled with "
            "`python3 scripts/publish_site.py --fill-libs .sitelibs` (docs/site.md).",
            file=sys.stderr,
        )
        return None


def publish(results: str, html_dir: str, libs: str | None) -> int:
    conf = load_conf(ROOT)
    machines = find_machines(ROOT, results)
    if not machines:
        print(f"publish_site: no machine in {results} has results; nothing to publish", file=sys.stderr)
        return 1
    shutil.rmtree(html_dir, ignore_errors=True)
    for machine in machines:
        site = site_dir(html_dir, machine)
        with tempfile.TemporaryDirectory(prefix="disagmoe-site-") as work:
            stage_results(results, machine.name, os.path.join(work, "results"))
            asv_publish(ROOT, conf, machine.name, os.path.join(work, "results"), site, work)
        if libs:
            site_libs.localise(site, libs)
        site_labels.label_pages(site, footer(html_dir, machines, machine))
        site_labels.label_units(site)
        site_labels.centre_axis_labels(site)
        num_commits = machine.num_in_git + machine.num_local
        site_regressions.label_regressions(site, num_commits, conf.get("regressions_thresholds", {}))
        print(f"publish_site: {machine.name} ({machine.label}): {os.path.relpath(site, html_dir)}/")
    write_landing(results, html_dir, machines)
    print("publish_site: the front page (index.html): which design wins where, per GPU machine")
    shown = os.path.relpath(html_dir)
    print(
        f"publish_site: site in {shown}, "
        + (
            f"libraries from {os.path.relpath(libs)}, works offline"
            if libs
            else "NEEDS THE INTERNET (see the warning above)"
        )
    )
    serve = f"`python3 -m http.server -b 127.0.0.1 -d {shown} 8080`"
    if html_dir == os.path.join(ROOT, conf["html_dir"]):
        serve = "`asv preview` or " + serve
    print(f"publish_site: open it with {serve}, then http://127.0.0.1:8080/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--libs",
        help="folder laid out like node_modules/ that holds the site's libraries "
        "(default: $DISAGMOE_SITELIBS, .sitelibs, node_modules, the first that holds them)",
    )
    parser.add_argument("--results", help="the asv results folder (default: asv.conf.json's results_dir)")
    parser.add_argument("--html-dir", help="where the site goes (default: asv.conf.json's html_dir)")
    parser.add_argument(
        "--fill-libs", metavar="DIR", help="copy the libraries the site needs from node_modules/ into DIR, then stop"
    )
    args = parser.parse_args(argv)
    if args.fill_libs:
        site_libs.fill(os.path.join(ROOT, "node_modules"), os.path.abspath(args.fill_libs), ROOT)
        print(f"publish_site: the site's libraries are in {args.fill_libs} (carry it, beside .wheels/)")
        return 0
    conf = load_conf(ROOT)
    results = os.path.abspath(args.results or os.path.join(ROOT, conf["results_dir"]))
    html_dir = os.path.abspath(args.html_dir or os.path.join(ROOT, conf["html_dir"]))
    return publish(results, html_dir, find_libs(args.libs))


if __name__ == "__main__":
    sys.exit(main())
