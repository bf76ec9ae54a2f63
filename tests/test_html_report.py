"""report.html: one self-contained page per command run, checked in a real headless browser (Debian's Chromium).

The page is opened from a copy with a probe script added (the report itself has no script): it
records JavaScript and console errors and failed loads, and on ``load`` writes what it found into the
DOM, which ``--dump-dom`` prints. A screenshot of the report as it is shows that it renders.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest

from lightning_tricks.callbacks.recipe_check import CheckResult
from lightning_tricks.commands.html_report import HtmlReport
from lightning_tricks.commands.run_report import RunRecord, metric_curves
from lightning_tricks.utilities.media import images_logged_to, log_image
from lightning_tricks.utilities.plots import new_figure

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (.ci/run installs it when it runs as root)"
)

# Runs in the page before anything else: keeps every error, then reports on `load`.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  e.message || ("failed to load " + e.target.outerHTML.slice(0, 80))), true);
const consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(" ")); consoleError.apply(console, args); };
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const found = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    fetched: performance.getEntriesByType("resource").map(r => r.name),
    errors: window.__errors,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"  # its own profile: no state shared with another browser or test
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def open_in_browser(report: Path, tmp_path: Path) -> dict:
    """Load ``report`` in headless Chromium; return what the probe found, and the console lines of the page."""
    probed = tmp_path / f"probed-{report.parent.name}.html"
    probed.write_text(report.read_text().replace("<head>", "<head>" + PROBE, 1))
    proc = chromium(
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
        tmp_path=tmp_path,
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the page did not finish loading:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    found = json.loads(html.unescape(match.group(1)))
    # The page has no script of its own and the probe writes nothing to the console: any console line is the page's.
    found["console"] = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    return found


def screenshot(report: Path, tmp_path: Path) -> Path:
    shot = tmp_path / f"{report.parent.name}.png"
    chromium("--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri(), tmp_path=tmp_path)
    return shot


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_self_contained(page: str) -> None:
    """Nothing to fetch: every src/href is a data URI or a link inside the page, and there is no script."""
    assert "<script" not in page.lower()
    outside = [m for m in re.findall(r'(?:src|href)="([^"]*)"', page) if not m.startswith(("data:", "#"))]
    assert not outside, f"the page refers to files or sites: {outside[:5]}"


# ------------------------------------------------------------------------------------------ the page itself
def test_page_embeds_images_and_escapes_what_it_shows(tmp_path: Path) -> None:
    page = HtmlReport("a <b>title</b>", "sub")
    hostile = "<script>alert(1)</script>"
    page.table(["name", "value"], [[hostile, 1.23456789], ["n", None]])
    page.verdicts([CheckResult("init_loss", False, f"loss {hostile}", measured=9.0, expected=2.3, details={"n": 3})])
    figure = new_figure()
    figure.subplots().plot([1, 2, 3])
    digit = (np.arange(64, dtype=np.uint8).reshape(8, 8, 1)) * 4
    page.figures({"curve": figure, "digit": digit})
    page.markdown(f"# heading\n\n| a | b |\n|---|---|\n| 1 | {hostile} |\n")
    text = page.save(tmp_path).read_text()
    assert_self_contained(text)
    assert text.count('src="data:image/png;base64,') == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a &lt;b&gt;title&lt;/b&gt;" in text
    assert '<span class="badge FAIL">FAIL</span>' in text and "n=3" in text and "1.235" in text
    assert "<table>" in text and "<h1>heading</h1>" in text  # the Markdown's table and heading, as HTML
    # The 8x8 digit is shown enlarged with sharp pixels, the figure as drawn.
    assert 'class="pixels" width="256"' in text


def test_images_logged_reach_the_listener_whatever_the_loggers(tmp_path: Path) -> None:
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False)
    seen = []
    with images_logged_to(lambda key, step, image: seen.append((key, step, image.shape))):
        log_image(trainer, "tricks/x/grid", np.zeros((2, 1, 4, 4), dtype=np.float32), step=3)
    log_image(trainer, "tricks/x/after", np.zeros((4, 4), dtype=np.float32))  # no listener any more
    assert [(k, s) for k, s, _ in seen] == [("tricks/x/grid", 3)] and seen[0][2][-1] in (1, 3)
    assert len(list((tmp_path / "media").glob("*.png"))) == 2  # the files are written as before


def test_run_record_keeps_every_epoch_when_an_older_checkpoint_is_restored() -> None:
    record = RunRecord()
    record.history = [{"epoch": 0.0, "val/loss": 1.0}, {"epoch": 1.0, "val/loss": 0.5}, {"epoch": 2.0, "val/loss": 0.7}]
    best = RunRecord()
    best.load_state_dict({"history": record.history[:2]})  # a resumed fit: the epochs before it
    assert best.history == record.history[:2]
    record.load_state_dict({"history": record.history[:2]})  # validate(ckpt_path=best) after the fit
    assert [h["epoch"] for h in record.history] == [0.0, 1.0, 2.0]


def test_metric_curves_one_figure_per_metric_with_a_line_per_split() -> None:
    history = [
        {"epoch": float(e), "train/loss_step": 9.0, "train/loss_epoch": 2.0 - e, "val/loss": 1.5 - e / 2}
        | {"val/acc": 0.5, "tricks/init_loss/measured": 1.4}
        for e in range(3)
    ]
    figures = metric_curves(history)
    assert sorted(figures) == ["acc", "loss"]
    lines = figures["loss"].axes[0].get_lines()
    assert sorted(line.get_label() for line in lines) == ["train", "val"]
    train = next(line for line in lines if line.get_label() == "train")
    assert list(train.get_ydata()) == [2.0, 1.0, 0.0]  # the epoch's mean, not the last step's 9.0


# ------------------------------------------------------------------------------------------ the commands
SMALL = ["data=synthetic/classification", "data.num_samples=600", "trainer.max_epochs=2", "logger=csv"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline"}
    command = [sys.executable, "-m", "lightning_tricks", *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One small run of each command: ``{command: (its folder, what it printed)}``."""
    tmp = tmp_path_factory.mktemp("runs")
    out = {}
    for command, args in {
        "train": SMALL,
        "preflight": SMALL[:2],
        "inspect": SMALL[:2],
    }.items():
        out[command] = (tmp / command, cli(command, *args, f"hydra.run.dir={tmp / command}", cwd=tmp).stdout)
    checkpoints = sorted(str(p) for p in (tmp / "train" / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    ensemble = ["ensemble", f"checkpoints=[{','.join([*checkpoints, str(tmp / 'train/checkpoints/last.ckpt')])}]"]
    out["ensemble"] = (tmp / "ensemble", cli(*ensemble, f"hydra.run.dir={tmp / 'ensemble'}", cwd=tmp).stdout)
    tune = ["tune", *SMALL[:2], "recipe=none", "logger=csv", "trainer.max_epochs=1", "test=false", "tune.n_trials=2"]
    out["tune"] = (
        tmp / "tune",
        cli(*tune, "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp / 'tune'}", cwd=tmp).stdout,
    )
    return out


@pytest.mark.slow
def test_train_report_holds_summary_verdicts_curves_and_figures(runs: dict) -> None:
    run_dir, stdout = runs["train"]
    report = run_dir / "report.html"
    assert f"report       {report}" in stdout  # the summary names it
    page = report.read_text()
    assert_self_contained(page)
    for check in ("init_loss", "gradient_dependency", "overfit_batch", "input_independent_baseline", "shuffle"):
        assert f"<td>{check}</td>" in page, check
    assert page.count('class="badge ') >= 5
    for section in ("Summary", "Checks", "Curves", "Figures", "Log"):
        assert f"<h2>{section}</h2>" in page
    assert 'alt="loss"' in page and 'alt="acc"' in page  # the curves
    assert "tricks/prediction_dynamics/curves" in page and "tricks/overfit_batch/" in page  # callbacks' figures
    assert "ckpt_path=" in page and str(run_dir / "checkpoints" / "last.ckpt") in page  # how to continue
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["report"] == str(report) and f"{summary['metrics']['test/acc']:.4g}" in page


@pytest.mark.slow
@needs_browser
@pytest.mark.parametrize("command", ["train", "preflight", "inspect", "ensemble", "tune"])
def test_report_renders_in_a_headless_browser(runs: dict, command: str, tmp_path: Path) -> None:
    run_dir, stdout = runs[command]
    report = run_dir / "report.html"
    assert str(report) in stdout
    assert_self_contained(report.read_text())
    found = open_in_browser(report, tmp_path)
    assert found["errors"] == [] and found["console"] == [], found
    assert found["broken"] == [] and found["fetched"] == [], found  # every image decoded; nothing fetched
    assert found["images"] >= {"train": 8, "preflight": 2, "inspect": 1, "ensemble": 0, "tune": 1}[command]
    shot = screenshot(report, tmp_path)
    assert png_size(shot) == (1280, 1600) and shot.stat().st_size > 20_000  # a rendered page, not a blank one


@pytest.mark.slow
@needs_browser
def test_the_browser_check_catches_a_broken_page(tmp_path: Path) -> None:
    # The checks above can fail: a page with a broken image, a remote one, a script error and a console error.
    bad = tmp_path / "bad" / "report.html"
    bad.parent.mkdir()
    bad.write_text(
        '<!DOCTYPE html><html><head><title>bad</title></head><body><img src="data:image/png;base64,AAAA" alt="broken">'
        '<img src="https://example.invalid/x.png" alt="remote"><script>undefinedFunction()</script>'
        '<script>console.error("boom")</script></body></html>'
    )
    with pytest.raises(AssertionError):
        assert_self_contained(bad.read_text())
    found = open_in_browser(bad, tmp_path)
    assert found["broken"] == ["broken", "remote"] and found["fetched"] == ["https://example.invalid/x.png"]
    assert "boom" in found["errors"] and any("undefinedFunction" in e for e in found["errors"])
    assert len(found["console"]) == 2
