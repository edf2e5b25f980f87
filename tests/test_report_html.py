"""``ck report``: the page of a real experiment, opened in headless Chromium.

The browser is driven over the Chrome DevTools Protocol: the page must load from disk with no console
error and no network request, the table must hold one row per run x target (counted from each run's
``status.json``, not from the page's own data), the loss-curve chart must be drawn, and a screenshot
is written next to the test's files, or into ``$CK_TEST_ARTIFACTS`` when set (its path is printed).

Chromium is installed once by ``make system`` (run by ``make test``); without it the browser checks
skip here, and fail under ``CI=true`` (the reason is not listed in ``tests/skip_reasons.py``: CI
installs it)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import yaml
from conftest import write_spec

from cruijff_kit._base.errors import CkError
from cruijff_kit._base.layout import ExperimentLayout

LIMIT_BYTES = 5_000_000

# two failing runs: fail_at_step 4 stops the second epoch of the runs with learning rate 0.2
TOY_SPEC = """
experiment: toy
model: {path: m}
dataset: {plugin: toy-data}
train: {plugin: toy, epochs: 2, steps_per_epoch: 3}
eval:
  - {plugin: toy-eval, task: exact, checkpoints: all}
sweep:
  train.lora.rank: [4, 8]
variants:
  - {train.learning_rate: 0.1}
  - {train.learning_rate: 0.2, train.fail_at_step: 4}
"""


# --------------------------------------------------------------------------- the browser
def chromium() -> str:
    """The Chromium binary, or a skip saying how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed: `make system` installs it (Debian's chromium package, as root)")
    return found


class Page:
    """One headless Chromium tab on a ``file://`` page, driven over the DevTools Protocol."""

    def __init__(self, binary: str, profile: Path) -> None:
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
             "--disable-background-networking", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"], stdout=self.log, stderr=self.log)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise AssertionError(f"chromium did not start: {(profile / 'chromium.log').read_text()[-2000:]}")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1,
                                                          "mobile": False}, session=True)

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False,
             timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True}, session=True)
        assert "exceptionDetails" not in res, res["exceptionDetails"]
        return res["result"].get("value")

    def open(self, path: Path, timeout: float = 90) -> None:
        """Load ``path`` and wait until the page says its charts are drawn (``window.ckReport.ready``)."""
        self.call("Page.navigate", {"url": path.resolve().as_uri()}, session=True)
        deadline = time.monotonic() + timeout
        while not self.evaluate("!!(window.ckReport && window.ckReport.ready)"):
            assert time.monotonic() < deadline, "the page did not finish drawing its charts"
            time.sleep(0.2)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and log errors the page raised."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails"))[:2000])
            elif e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(json.dumps(p.get("args"))[:2000])
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(json.dumps(p["entry"])[:2000])
        return out

    def requests(self) -> list[str]:
        """URLs the page asked for."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def page(tmp_path: Path):
    p = Page(chromium(), tmp_path / "chromium-profile")
    yield p
    p.close()


# what the page shows, read from the DOM
PAGE_FACTS = """JSON.stringify({
  rows: document.querySelectorAll('#runs-table tbody tr').length,
  cells: [...document.querySelectorAll('#runs-table tbody tr')].map(tr =>
     [...tr.querySelectorAll('td')].map(td => td.textContent)),
  header: [...document.querySelectorAll('#runs-table thead tr:first-child th')].map(th => th.textContent),
  best: document.querySelectorAll('#runs-table td.best').length,
  sharedBadges: document.querySelectorAll('#runs-table .badge').length,
  curve: !!document.getElementById('loss-curves'),
  curveDrawn: !!document.querySelector('#loss-curves .main-svg'),
  curveTraces: (document.getElementById('loss-curves') || {}).data ? document.getElementById('loss-curves').data.length : 0,
  curveRuns: document.querySelectorAll('#curve-runs input').length,
  metricParam: !!document.querySelector('#metric-param .main-svg'),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
  logTails: [...document.querySelectorAll('#stages-table pre.log-tail')].map(p => p.textContent),
  errors: [...document.querySelectorAll('#stages-table summary')].map(s => s.textContent),
  views: [...document.querySelectorAll('#runs-table code')].map(c => c.textContent),
  env: !!document.getElementById('env-table'),
  sweep: [...document.querySelectorAll('#sweep-table td code')].map(c => c.textContent),
  evalRewards: [...document.querySelectorAll('.eval-reward-table tr')].slice(1).map(tr =>
     [...tr.querySelectorAll('td')].map(td => td.textContent)),
  rewardCharts: document.querySelectorAll('#eval-reward-chart-0.js-plotly-plot, #reward-chart.js-plotly-plot').length,
  riskCharts: document.querySelectorAll('#reliability-0.js-plotly-plot, #roc-0.js-plotly-plot').length,
  reliability: document.getElementById('reliability-0') ? {x: document.getElementById('reliability-0').data[0].x,
     y: document.getElementById('reliability-0').data[0].y} : null,
  confusion: [...document.querySelectorAll('#confusion tr')].map(tr =>
     [...tr.querySelectorAll('th, td')].map(c => c.textContent)),
  chartError: window.ckReport.error,
  plots: window.ckReport.plots,
  scripts: [...document.querySelectorAll('script[src], link[href]')].length,
})"""


def run_target_pairs(exp: Path) -> set[tuple[str, str]]:
    """(run, target) of every eval stage, read from each run's status.json with json alone."""
    pairs = set()
    for run in (exp / "runs").iterdir():
        stages = json.loads((run / "status.json").read_text())["stages"]
        pairs |= {(run.name, s.split(".")[2]) for s in stages if s.startswith("eval.")}
    return pairs


def check_page(page: Page, report: Path, exp: Path, tmp_path: Path) -> dict[str, Any]:
    """The checks every experiment's page passes; returns the page's facts for more."""
    assert report.stat().st_size < LIMIT_BYTES
    page.open(report)
    facts = json.loads(page.evaluate(PAGE_FACTS))
    shot = page.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CK_TEST_ARTIFACTS")  # a folder that outlives pytest's temporary ones
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shot = Path(shutil.copy(shot, Path(keep) / f"report-{exp.name}.png"))
    print(f"screenshot of the report: {shot}")
    assert page.errors() == []
    assert facts["chartError"] is None
    outside = [u for u in page.requests() if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert outside == [] and facts["scripts"] == 0  # nothing fetched, nothing linked: everything is inline
    pairs = run_target_pairs(exp)
    assert facts["rows"] == len(pairs)
    run_col, target_col = facts["header"].index("run"), facts["header"].index("target")
    assert {(c[run_col], c[target_col]) for c in facts["cells"]} == pairs
    assert facts["curve"] and facts["curveDrawn"] and facts["metricParam"]
    assert facts["env"]
    for url in facts["links"]:  # every link is a file of the experiment that exists
        assert url.startswith("file://"), url
        target = Path(unquote(urlparse(url).path))
        assert target.is_file() and target.is_relative_to(exp), url
    return facts


# --------------------------------------------------------------------------- a real tiny sweep (toy plugins)
@pytest.mark.integration
def test_toy_sweep_report_in_chromium(tmp_path: Path, with_toy: Path, ck, page: Page) -> None:
    spec = write_spec(tmp_path, TOY_SPEC)
    ck("run", str(spec))  # the broken runs fail: exit code 1
    exp = tmp_path / "runs" / "toy"
    # a multi-turn evaluation's conversations (one target) and a simulation's, as their writers lay them out
    done = sorted(r for r in (exp / "runs").iterdir()
                  if json.loads((r / "status.json").read_text())["stages"]["train"]["state"] == "done")
    (done[0] / "eval/exact/epoch_1/conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in [
        {"conv_id": "a", "num_turns": 2, "scores": {"reward": 0.5, "accuracy": 1.0}},
        {"conv_id": "b", "num_turns": 3, "scores": {"reward": 0.25, "accuracy": 0.0}}]))
    # a risk scorer's bins and ROC curve and a classification scorer's confusion matrix, as the inspect
    # evaluator records them in results.json
    results = json.loads((done[0] / "eval/results.json").read_text())
    results["exact"]["epoch_1"].update({
        "calibration": {"risk": [{"lower": 0.0, "upper": 0.5, "count": 3, "mean_predicted": 0.2, "observed": 0.33},
                                 {"lower": 0.5, "upper": 1.0, "count": 0, "mean_predicted": None, "observed": None}]},
        "roc": {"risk": [[0.0, 0.0], [0.5, 1.0], [1.0, 1.0]]},
        "confusion_matrix": {"label": {"labels": ["no", "yes"], "matrix": [[3, 1], [0, 2]]}}})
    (done[0] / "eval/results.json").write_text(json.dumps(results))
    (exp / "simulate").mkdir()
    (exp / "simulate/conversations.jsonl").write_text(json.dumps({"conv_id": "a", "turns": [
        {"turn_id": 0, "chosen": 0, "candidates": [{"score": 0.9, "rewards": {"accuracy": 1.0}}]}]}) + "\n")
    res = ck("report", str(spec), check=True)
    report = exp / "report.html"
    assert res.stdout.strip() == f"Wrote {report}"
    facts = check_page(page, report, exp, tmp_path)
    # 4 runs x (base, epoch_0, epoch_1)
    assert facts["rows"] == 12 and facts["curveRuns"] == 4
    assert facts["curveTraces"] == 4  # the toy trainer logs a train loss, no validation
    assert facts["best"] >= 1 and facts["sharedBadges"] == 4  # one shared base evaluation shown on 4 rows
    assert facts["sweep"] == ["train.lora.rank", "train.learning_rate", "train.fail_at_step"]
    # the two failed trainings, each with the end of its error log
    trains = [json.loads((run / "status.json").read_text())["stages"]["train"]["state"]
              for run in (exp / "runs").iterdir()]
    assert trains.count("failed") == 2
    assert len(facts["logTails"]) == 2 and all("toy failure at step 4" in t for t in facts["logTails"])
    assert sum("toy failure at step 4" in e for e in facts["errors"]) == 2
    # the reward components: the evaluation's mean over its two conversations, the simulation's chart
    assert facts["evalRewards"] == [[done[0].name, "epoch_1", "2", "2.5", "0.375", "0.5", "conversations.jsonl"]]
    assert facts["rewardCharts"] == 2
    assert facts["riskCharts"] == 2 and facts["confusion"] == [["actual \\ predicted", "no", "yes"],
                                                                ["no", "3", "1"], ["yes", "0", "2"]]
    assert facts["reliability"] == {"x": [0.2], "y": [0.33]}  # the empty bin is not drawn
    # sorting by a column and filtering rows work in the page
    page.evaluate("document.querySelector('#runs-table thead th').click()")
    first = page.evaluate("document.querySelector('#runs-table tbody tr td').textContent")
    assert first == min(r for r, _ in run_target_pairs(exp))
    shown = page.evaluate("(() => { const f = document.querySelector('input.colfilter[data-col=\"target\"]');"
                          " f.value = 'epoch_1'; f.dispatchEvent(new Event('input'));"
                          " return document.querySelectorAll('#runs-table tbody tr').length; })()")
    assert shown == 4
    # a run unticked: its curve is hidden
    hidden = page.evaluate("(() => { const cb = document.querySelector('#curve-runs input'); cb.click();"
                           " const d = document.getElementById('loss-curves');"
                           " return d.data.filter(t => t.visible === false).length; })()")
    assert hidden == 1
    assert page.errors() == []


# --------------------------------------------------------------------------- a real tiny sweep (trl + inspect)
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CK_SLOW") != "1", reason="slow tier: set CK_SLOW=1")
def test_real_sweep_report_in_chromium(tmp_path: Path, tiny_llama: Path, page: Page) -> None:
    """trl trains two runs on CPU with validation; inspect evaluates base (shared), epoch_0 and epoch_1."""
    pytest.importorskip("trl")
    pytest.importorskip("inspect_ai")
    from click.testing import CliRunner
    from trl_fixtures import write_capitalize_data

    from cruijff_kit._cli import _add_plugin_commands, cli
    from cruijff_kit.engine import load_spec, make_plan, run_stage, write_experiment

    write_capitalize_data(tmp_path, n_train=16, n_val=4, n_test=4)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump({
        "experiment": "report", "output_dir": str(tmp_path / "out"), "seed": 7,
        "model": {"path": str(tiny_llama)}, "prompt": {"template": "Capitalize: {input}"},
        "dataset": {"plugin": "json-instruct", "path": "capitalize.json"},
        "train": {"plugin": "trl", "epochs": 2, "batch_size": 4, "logging_steps": 1, "eval_steps": 2,
                  "lora": {"rank": 4, "dropout": 0.0}, "save_epochs": "all"},
        "eval": [{"plugin": "inspect", "task": "exact-match", "checkpoints": "all", "include_base": True,
                  "limit": 2, "batch_size": 2, "device": "cpu", "generation": {"max_tokens": 3},
                  "scorers": ["match", "includes"]}],
        "sweep": {"train.learning_rate": [0.01, 0.03]},
        "scheduler": {"plugin": "local"},
    }, sort_keys=False))
    plan = make_plan(load_spec(spec_path))
    write_experiment(plan)
    for job in plan.jobs():
        run_stage(job.run_dir, job.stage)
    _add_plugin_commands()
    res = CliRunner().invoke(cli, ["report", str(spec_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    exp = plan.layout.root
    report = Path(out["report"])
    assert report == exp / "report.html" and out["rows"] == 2 * 3
    facts = check_page(page, report, exp, tmp_path)
    assert facts["rows"] == 6 and facts["curveRuns"] == 2
    assert facts["curveTraces"] == 4  # train and validation of each run
    assert facts["sharedBadges"] == 2 and facts["best"] >= 2
    eval_links = [u for u in facts["links"] if u.endswith(".eval")]
    assert len(eval_links) == 6  # each row links its inspect log (the shared base log on both runs' rows)
    assert len({u for u in eval_links}) == 1 + 2 * 2
    assert all(v.startswith("inspect view --log-dir ") and Path(v.split()[-1].strip("'")).is_dir()
               for v in facts["views"])
    assert facts["logTails"] == []  # nothing failed


# --------------------------------------------------------------------------- no browser needed
@pytest.mark.integration
def test_size_and_contents_without_a_browser(tmp_path: Path, with_toy: Path, ck) -> None:
    spec = write_spec(tmp_path, TOY_SPEC)
    ck("run", str(spec))
    exp = tmp_path / "runs" / "toy"
    res = ck("report", str(exp), "--json", check=True)
    out = json.loads(res.stdout)
    assert out["ok"] and out["rows"] == 12 and out["report"] == str(exp / "report.html")
    text = (exp / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>\n<!-- written by ck report -->\n")
    assert "<script src" not in text and "<link " not in text and "cdn." not in text.lower()
    data = json.loads(text.split('<script type="application/json" id="ck-data">')[1].split("</script>")[0])
    assert data["sweep"]["train.lora.rank"] == [4, 8]
    assert sorted(data["curves"]) == sorted(p.name for p in (exp / "runs").iterdir())
    # the toy trainer logs train_loss = 1/step at steps 1..6; the broken runs log step 4, then fail
    assert sorted(len(c["train"]["step"]) for c in data["curves"].values()) == [4, 4, 6, 6]
    for series in data["curves"].values():
        steps = list(range(1, len(series["train"]["step"]) + 1))
        assert series["train"] == {"step": steps, "loss": [float(f"{1 / s:.5g}") for s in steps]}
        assert series["val"] == {"step": [], "loss": []}
    # a second run writes over its own page; a page ck did not write is refused, then replaced on request
    ck("report", str(exp), check=True)
    (exp / "report.html").write_text("<html>mine</html>")
    res = ck("report", str(exp))
    assert res.returncode != 0 and "report.html" in res.stderr and "--overwrite" in res.stderr
    assert (exp / "report.html").read_text() == "<html>mine</html>"
    ck("report", str(exp), "--overwrite", check=True)
    assert (exp / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_watch_writes_again_when_a_stage_finishes(tmp_path: Path, with_toy: Path, ck) -> None:
    from cruijff_kit._summaries.report import write

    spec = write_spec(tmp_path, TOY_SPEC.split("variants:")[0])
    ck("run", str(spec), check=True)
    exp = ExperimentLayout(tmp_path / "runs" / "toy")
    status_file = next((exp.runs_dir).iterdir()) / "status.json"
    done = status_file.read_text()
    data = json.loads(done)
    data["stages"]["eval.exact.epoch_1"]["state"] = "running"
    status_file.write_text(json.dumps(data))
    writes: list[int] = []
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the stage finishes while ck report waits
        sleeps.append(seconds)
        if len(sleeps) == 2:
            status_file.write_text(done)

    write.watch(exp, overwrite=False, interval=0.5, sleep=sleep,
                on_write=lambda path, d: writes.append(write.active(d)))
    assert writes == [1, 0]  # written with one stage running, then again once it finished; then it returns
    assert sleeps == [0.5, 0.5]


def test_missing_plotly_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from cruijff_kit._summaries.report import page

    page.plotly_bundle.cache_clear()
    monkeypatch.setitem(sys.modules, "plotly", None)
    with pytest.raises(CkError, match=r'cruijff-kit\[plots\]'):
        page.plotly_bundle()
    page.plotly_bundle.cache_clear()


def test_ck_help_and_import_do_not_load_plotly() -> None:
    code = ("import sys, cruijff_kit; from click.testing import CliRunner; from cruijff_kit._cli import cli, "
            "_add_plugin_commands; _add_plugin_commands(); r = CliRunner().invoke(cli, ['--help']); "
            "assert r.exit_code == 0 and 'report' in r.output, r.output; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'plotly'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_thin_keeps_the_last_point_and_the_limit() -> None:
    from cruijff_kit._summaries.report.collect import thin

    pts = [[float(i), 1.0 / (i + 1)] for i in range(1000)]
    out = thin(pts, limit=100)
    assert len(out) <= 100 and out[0] == pts[0] and out[-1] == pts[-1]
    assert out[1] == pts[11]  # ceil(1000 / 99) = 11: every 11th row
    assert thin(pts[:50], limit=100) == pts[:50]


def test_reward_components_per_turn(tmp_path: Path) -> None:
    from cruijff_kit._summaries.report.collect import rewards

    exp = ExperimentLayout(tmp_path / "exp")
    (exp.root / "simulate").mkdir(parents=True)
    conv = {"conv_id": "a", "turns": [
        {"turn_id": 0, "chosen": 1, "candidates": [
            {"score": 0.2, "rewards": {"accuracy": 0.0, "token_amount": 0.1}},
            {"score": 0.9, "rewards": {"accuracy": 1.0, "token_amount": 0.3}}]},
        {"turn_id": 1, "chosen": 0, "candidates": [{"score": 0.5, "rewards": {"accuracy": 0.5, "token_amount": 0.2}}]}]}
    conv2 = {"conv_id": "b", "turns": [{"turn_id": 0, "chosen": 0, "candidates": [
        {"score": 0.7, "rewards": {"accuracy": 1.0, "token_amount": 0.5}}]}]}
    (exp.root / "simulate" / "conversations.jsonl").write_text(
        json.dumps(conv) + "\n" + json.dumps(conv2) + "\n" + '{"conv_id": "c", "tur')  # a torn last line
    r = rewards(exp)
    assert r is not None and r["conversations"] == 2 and r["components"] == ["accuracy", "score", "token_amount"]
    # turn 0: chosen candidates are conv a's second (1.0, 0.3, 0.9) and conv b's (1.0, 0.5, 0.7)
    assert r["chosen"][0] == {"turn": 0, "n": 2, "means": {"accuracy": 1.0, "token_amount": 0.4, "score": 0.8}}
    # all candidates of turn 0: accuracy (0 + 1 + 1) / 3, tokens (0.1 + 0.3 + 0.5) / 3, score (0.2 + 0.9 + 0.7) / 3
    assert r["all"][0]["n"] == 3
    assert r["all"][0]["means"] == pytest.approx({"accuracy": 2 / 3, "token_amount": 0.3, "score": 0.6}, abs=1e-5)
    assert r["chosen"][1] == {"turn": 1, "n": 1, "means": {"accuracy": 0.5, "token_amount": 0.2, "score": 0.5}}


def test_a_damaged_cached_bundle_is_packed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip

    from plotly.offline import get_plotlyjs

    from cruijff_kit._summaries.report import page

    cached = tmp_path / "cache" / "plotly.min.js.gz.b64"
    monkeypatch.setattr(page, "_cache_file", lambda version, source: cached)
    page.plotly_bundle.cache_clear()
    try:
        _, packed = page.plotly_bundle()  # packed and kept
        assert gzip.decompress(base64.b64decode(packed)).decode() == get_plotlyjs()
        assert cached.read_text() == packed
        cached.write_text(base64.b64encode(gzip.compress(b"alert(1)")).decode())  # another script, or a cut file
        page.plotly_bundle.cache_clear()
        _, again = page.plotly_bundle()
        assert again == packed and cached.read_text() == packed
    finally:
        page.plotly_bundle.cache_clear()


def test_an_experiment_never_run_is_refused(tmp_path: Path, with_toy: Path, ck) -> None:
    spec = write_spec(tmp_path, TOY_SPEC)
    res = ck("report", str(spec))
    assert res.returncode != 0
    err = " ".join(res.stderr.split())
    assert "has not been run yet" in err and f"`ck run {spec}`" in err, err
    assert not (tmp_path / "runs" / "toy" / "report.html").exists()
