"""The JavaScript and CSS libraries of asv's site, served from the site itself.

asv 0.6.6's index.html loads jQuery, Bootstrap, Flot and three plugins from CDNs, so
without the internet its pages show only "One or more external (JavaScript)
dependencies failed to load". The same libraries are npm packages (package.json,
package-lock.json): `npm ci` puts them in node_modules/, and `localise` copies the
files the site needs into it and points its tags at the copies. A machine without npm
(the offline GPU machine) takes them from a carried folder laid out like node_modules/
(`python3 scripts/publish_site.py --fill-libs .sitelibs` fills one from node_modules/).

Every CDN address of the page must be in CDN_FILES, so that an asv whose pages load
something else stops the publish instead of writing a page that needs the network. A
tag keeps its `integrity` hash where the local file is the very file it names (jQuery,
Bootstrap, flot-orderbars and blueimp-md5 are byte for byte the CDNs' files), and the
browser checks it; Flot's minified builds and stupidtable 1.0.1 exist only on the CDN,
so their tags load the npm package's unminified Flot 0.8.3 and stupid-table-plugin 1.1.3
(the one version on npm, the same `stupidtable` / `stupidsort` calls).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil

# CDN address in asv's index.html -> (npm package, file inside it)
CDN_FILES = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": ("flot", "jquery.flot.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": ("flot", "jquery.flot.time.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js": (
        "flot",
        "jquery.flot.selection.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js": (
        "flot",
        "jquery.flot.categories.js",
    ),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": (
        "flot-orderbars",
        "js/jquery.flot.orderBars.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js": (
        "stupid-table-plugin",
        "stupidtable.min.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": ("blueimp-md5", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": ("bootstrap", "dist/js/bootstrap.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": (
        "bootstrap",
        "dist/css/bootstrap.min.css",
    ),
}
# files the ones above load by a relative address (Bootstrap's icon font)
EXTRA_FILES = [("bootstrap", "dist/fonts/glyphicons-halflings-regular." + ext) for ext in ("eot", "svg", "ttf", "woff")]
LIB_DIR = "lib"  # inside the site
TAG = re.compile(r"<(script|link)\b[^>]*?\b(?:src|href)=\"(https?://[^\"]+)\"[^>]*>")
DROPPED_ATTRIBUTES = ("crossorigin", "referrerpolicy")


class LibsMissing(RuntimeError):
    """No folder holds the libraries, or one holds other versions than package.json names."""


def wanted_versions(root: str) -> dict[str, str]:
    """The exact version of each package, from the repository's package.json."""
    with open(os.path.join(root, "package.json")) as f:
        return json.load(f)["dependencies"]


def all_files() -> list[tuple[str, str]]:
    return sorted(set(CDN_FILES.values()) | set(EXTRA_FILES))


def check_folder(folder: str, versions: dict[str, str]) -> list[str]:
    """What is wrong with `folder` as a source of the libraries (nothing: an empty list)."""
    problems = []
    for package, version in sorted(versions.items()):
        manifest = os.path.join(folder, package, "package.json")
        if not os.path.exists(manifest):
            problems.append(f"{package} is missing")
            continue
        with open(manifest) as f:
            found = json.load(f).get("version")
        if found != version:
            problems.append(f"{package} is {found}, not {version}")
    problems += [
        f"{package}/{path} is missing"
        for package, path in all_files()
        if not os.path.exists(os.path.join(folder, package, path))
    ]
    return problems


def find_folder(root: str, candidates: list[str]) -> str:
    """The first of `candidates` (paths relative to `root` or absolute) that holds every
    library at the version package.json names."""
    versions = wanted_versions(root)
    report = []
    for candidate in candidates:
        folder = os.path.join(root, candidate)
        if not os.path.isdir(folder):
            report.append(f"{candidate}: no such folder")
            continue
        problems = check_folder(folder, versions)
        if not problems:
            return folder
        report.append(f"{candidate}: " + "; ".join(problems))
    raise LibsMissing("no folder holds the site's libraries (" + " | ".join(report) + ")")


def fill(source: str, target: str, root: str) -> None:
    """Copy the files the site needs, and each package's package.json, from `source` (a
    node_modules folder) to `target`, keeping the layout: the carried folder."""
    problems = check_folder(source, wanted_versions(root))
    if problems:
        raise LibsMissing(f"{source}: " + "; ".join(problems) + " (run `npm ci` first)")
    for package, path in all_files() + [(p, "package.json") for p in wanted_versions(root)]:
        dest = os.path.join(target, package, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(source, package, path), dest)


def _sri(path: str, algorithm: str) -> str:
    with open(path, "rb") as f:
        digest = hashlib.new(algorithm, f.read()).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def _local_tag(tag: str, url: str, local: str, path: str) -> str:
    tag = tag.replace(f'"{url}"', f'"{local}"')
    for name in DROPPED_ATTRIBUTES:
        tag = re.sub(rf'\s{name}="[^"]*"', "", tag)
    match = re.search(r'\sintegrity="(sha\d+)-[^"]*"', tag)
    if match and match.group(0).strip() != f'integrity="{_sri(path, match.group(1))}"':
        tag = tag.replace(match.group(0), "")  # another build of the same version
    return tag


def localise(site: str, libs: str) -> int:
    """Copy the libraries into `site`/lib and point its index.html at them; returns how
    many tags changed. Raises ValueError naming an external address it has no file for."""
    for package, path in all_files():
        dest = os.path.join(site, LIB_DIR, package, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(libs, package, path), dest)
    index = os.path.join(site, "index.html")
    with open(index) as f:
        html = f.read()
    unknown = sorted({url for _, url in TAG.findall(html) if url not in CDN_FILES})
    if unknown:
        raise ValueError(f"{index} loads {', '.join(unknown)}, which scripts/site_libs.py has no local file for")
    changed = 0
    for match in list(TAG.finditer(html)):
        url = match.group(2)
        package, path = CDN_FILES[url]
        local = f"{LIB_DIR}/{package}/{path}"
        html = html.replace(match.group(0), _local_tag(match.group(0), url, local, os.path.join(site, local)))
        changed += 1
    with open(index, "w") as f:
        f.write(html)
    return changed
