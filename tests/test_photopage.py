"""The HTML pages of photos (tlkit/photopage.py): audit's and evaluate's, opened in a real browser (headless
Chromium from Debian's package, which scripts/test.sh installs): the page loads, every thumbnail shows, and
nothing reaches the console as an error. Without chromium these tests skip and say why."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tlkit import cli
from tlkit.photopage import Card, Section, render_page, write_page

from conftest import make_checkpoint, make_foldered, write_image

# Put before the page's own head (and its Content-Security-Policy, which governs only what follows it):
# records every error event (a resource that fails to load, a script error), policy violation and
# console.error, and once the page has loaded writes them, with how many images decoded, into the DOM.
CHECKER = """<script>
window.__errors = [];
addEventListener('error', e => __errors.push(e.message || ('failed to load ' + (e.target.src || e.target.tagName)).slice(0, 80)), true);
addEventListener('securitypolicyviolation', e => __errors.push('blocked by the policy: ' + e.blockedURI));
const consoleError = console.error;
console.error = (...args) => { __errors.push(args.join(' ')); consoleError(...args); };
addEventListener('load', () => {
  const images = [...document.images];
  const shown = images.filter(image => image.complete && image.naturalWidth > 0).length;
  const report = document.createElement('pre');
  report.id = 'page-check';
  report.textContent = JSON.stringify({images: images.length, shown: shown, errors: __errors});
  document.body.appendChild(report);
});
</script>"""
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--virtual-time-budget=5000", "--dump-dom")


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed: scripts/test.sh installs Debian's chromium package with apt-get where "
                    "it runs as root (or with sudo); the HTML pages are not checked in a browser here")
    return found


def open_in_browser(page: Path, tmp_path: Path) -> dict:
    """What the checker found once the page had loaded in headless Chromium (a fresh profile)."""
    checked = tmp_path / f"checked-{page.name}"
    checked.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + CHECKER, 1), encoding="utf-8")
    result = subprocess.run([browser(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", checked.as_uri()],
                            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="page-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page did not finish loading in chromium: {result.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_a_page_holds_its_thumbnails_and_loads_nothing(tmp_path):
    photos = [write_image(tmp_path / f"cat.{n}.jpg", size=(300, 200), color=n) for n in range(3)]
    broken = tmp_path / "dog.9.jpg"
    broken.write_bytes(b"\xff\xd8 not a photo")  # shown as a grey square, named in its caption
    page = render_page("a <test> page", "intro", [
        Section("single", [Card(path, ("first", path.name)) for path in (*photos, broken)]),
        Section("pairs", pairs=[(Card(photos[0], ("left",)), Card(photos[1], ("right",)))]),
        Section("empty")])
    assert "a &lt;test&gt; page" in page and "http" not in page.split("</head>")[1]
    assert page.count('src="data:image/jpeg;base64,') == 6


def test_the_audit_page_shows_every_thumbnail_without_an_error_in_a_browser(tmp_path):
    photos = [write_image(tmp_path / "photos" / f"{n}.jpg", size=(320, 240), color=n) for n in range(4)]
    write_page(tmp_path / "page.html", "audit of photos", "four photos",
               [Section("likely label errors", [Card(path, ("cat -> dog", "0.01")) for path in photos[:2]]),
                Section("near-duplicate pairs", pairs=[(Card(photos[2], ("exclude",)), Card(photos[3], ("its pair",)))])],
               table=[["class", "photos"], ["cat", "4"]])
    checked = open_in_browser(tmp_path / "page.html", tmp_path)
    assert checked == {"images": 4, "shown": 4, "errors": []}


@pytest.mark.usefixtures("one_thread")
def test_evaluate_mistakes_page_in_a_browser(tmp_path):
    run = make_checkpoint(tmp_path / "runs" / "tiny", seed=3)
    data = make_foldered(tmp_path / "validation", {"cat": 6, "dog": 5})
    assert cli.main(["-q", "evaluate", str(data), "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    mistakes = len(json.loads((tmp_path / "eval" / "report.json").read_text())["most_confident_mistakes"])
    checked = open_in_browser(tmp_path / "eval" / "mistakes.html", tmp_path)
    shown = mistakes + 1  # the mistakes' thumbnails and the reliability diagram
    assert mistakes > 0 and checked == {"images": shown, "shown": shown, "errors": []}


def test_a_page_that_reached_out_would_be_caught(tmp_path):
    """The check itself: an image from the network is blocked by the page's policy and reported."""
    page = tmp_path / "page.html"
    write_page(page, "t", "i", [])
    page.write_text(page.read_text().replace("</body>", '<img src="https://example.com/x.png"></body>'))
    checked = open_in_browser(page, tmp_path)
    assert checked["shown"] == 0 and checked["errors"]
