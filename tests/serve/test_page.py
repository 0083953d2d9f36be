"""The page at ``/`` in a real browser: headless Chromium (Debian's ``chromium`` package) started by the test.

It loads the page of the session's server after a skill was learned, and must show that skill and its
loss chart (an SVG polyline with one point per training step), with nothing fetched from the network.
The screenshot is kept as a test artefact in ``outputs/test-artifacts/serve_page.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pytest

from tests.serve.server_proc import ROOT

ARTIFACTS = ROOT / "outputs" / "test-artifacts"
pytestmark = pytest.mark.slow  # a served model and its learner process: ~20 s to start on 2 cores


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browse(binary: str, url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    # The proxy flags make any request off this machine fail, so a CDN dependency would show.
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp / 'profile'}", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
           "--virtual-time-budget=3000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp)})


@pytest.fixture(scope="module")
def skill(learned, server):
    """The skill the session learned (tests/serve/conftest.py), as /v1/skills lists it."""
    return next(s for s in server.client.get("/v1/skills").json()["data"] if s["id"] == learned["job"]["skill"])


def test_page_shows_the_learned_skill_and_its_loss_chart_in_headless_chromium(server, skill, tmp_path):
    binary = chromium()
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    dom = browse(binary, server.url + "/", tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert f'data-skill="{skill["id"]}"' in html and skill["query"] in unescape(html)
    # The chart as the browser holds it: one polyline point per training step of this skill.
    block = html.split(f'data-skill="{skill["id"]}"', 1)[1]
    points = re.search(r'<polyline[^>]*points="([^"]+)"', block)
    assert 'class="loss-chart"' in block and points, block[:2000]
    assert len(points.group(1).split()) == len(skill["loss_curve"])
    assert "Learning queue" in html and 'class="state done"' in html
    assert "http" not in re.sub(r'http://127\.0\.0\.1[^"\s<]*|xmlns="http://www\.w3\.org/2000/svg"', "", html).lower() \
        .split("<main>", 1)[0], "the page refers to something off this machine"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve_page.png"
    shot.unlink(missing_ok=True)
    r = browse(binary, server.url + "/", tmp_path, f"--screenshot={shot}", "--window-size=1280,1100",
               "--hide-scrollbars")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)  # (H, W, C) floats in [0, 1]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1200
    # Not blank: the dark header, the white sections and the blue loss line are all there.
    assert img[..., :3].std() > 0.05
    blue = (img[..., 2] > 0.7) & (img[..., 0] < 0.35) & (img[..., 1] < 0.6)
    assert blue.sum() > 50, "no loss line drawn in the screenshot"
    print(f"screenshot: {shot}")
