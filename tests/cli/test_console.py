"""``finetune console`` in a real headless browser (Debian's chromium driven by Playwright) against the session's
real pipeline: every page loads without a console error (and is saved as a screenshot under the test's
temp folder), the job page draws one point per logged step of the real training run, the evaluation shows the
answers side by side, the playground gets its answer from the endpoint, a running job moves and is cancelled
from its page, and the download button gives the verified model."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import subprocess
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import BIN, HELD_STEP
from tests.cli.helpers import ok
from tests.cli.test_jobs import SMALL
from tests.cli.test_resources import SYSTEM, TICKET, direct_answer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def console(pipeline) -> Iterator[str]:
    """`finetune console --port 0` as the user runs it; its URL, from the line it prints first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINETUNE_", "AWS_"))}
    process = subprocess.Popen([str(BIN / "finetune"), "console", "--port", "0", "--no-browser"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**env, "KUBECONFIG": str(pipeline.kubeconfig)})  # fmt: skip
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("finetune console: http://127.0.0.1:"), line
        yield line.split()[2]
    finally:
        process.terminate()
        process.wait(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (make tools installs it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("needs the playwright package (the dev extra)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Tab:
    """A browser page that records console errors and failed requests."""

    def __init__(self, browser: Any):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("requestfailed", lambda request: self.errors.append(f"{request.method} {request.url}: {request.failure}"))

    def open(self, url: str) -> Any:
        response = self.page.goto(url, wait_until="load")
        assert response is not None and response.ok, f"{url}: {response.status if response else 'no response'}"
        return response

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    opened = Tab(browser)
    try:
        yield opened
    finally:
        opened.close()


def metrics(pipeline, job: dict) -> list[dict]:
    bucket, key = job["status"]["artifactsUri"].removeprefix("s3://").split("/", 1)
    body = pipeline.store_client().get_object(bucket, f"{key}/metrics.jsonl").read().decode()
    return [json.loads(line) for line in body.splitlines()]


PAGES = {
    "jobs": ("/jobs", "ticket-router"),
    "job": ("/jobs/ticket-router", "Checkpoints"),
    "datasets": ("/datasets", "support-tickets"),
    "dataset": ("/datasets/support-tickets", "Check report"),
    "evaluations": ("/evaluations", "router-vs-base"),
    "evaluation": ("/evaluations/router-vs-base", "Answers side by side"),
    "endpoints": ("/endpoints", "support"),
    "endpoint": ("/endpoints/support", "Playground"),
}


@pytest.mark.parametrize("page", list(PAGES))
def test_each_page_loads_without_console_errors(console, tab: Tab, page: str, tmp_path: Path):
    path, expected = PAGES[page]
    tab.open(console.rstrip("/") + path)
    assert expected in tab.page.inner_text("main")
    shot = tmp_path / f"{page}.png"
    tab.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert tab.errors == []


def test_the_job_page_draws_one_point_per_logged_step_of_the_training_run(pipeline, console, tab: Tab):
    job = pipeline.get("finetunejobs", "ticket-router")
    logged = metrics(pipeline, job)
    tab.open(console + "jobs/ticket-router")
    steps = [int(s) for s in tab.page.eval_on_selector_all("#loss-chart .train-point", "els => els.map(e => e.dataset.step)")]
    assert steps == [m["step"] for m in logged if "trainLoss" in m]
    assert steps == list(range(1, job["status"]["progress"]["totalSteps"] + 1)), "every optimizer step of the run"
    losses = tab.page.eval_on_selector_all("#loss-chart .train-point", "els => els.map(e => Number(e.dataset.loss))")
    assert losses == pytest.approx([m["trainLoss"] for m in logged if "trainLoss" in m], rel=1e-5)
    evals = tab.page.eval_on_selector_all("#loss-chart .eval-point[data-step]", "els => els.map(e => Number(e.dataset.step))")
    assert evals == [13, 26]
    assert tab.page.inner_text("#stat-step") == "26/26"
    assert tab.errors == []


def test_the_evaluation_page_shows_the_score_table_and_each_models_answer_with_its_verdicts(pipeline, console, tab: Tab):
    evaluation = pipeline.get("evaluations", "router-vs-base")
    bucket, key = evaluation["status"]["resultsUri"].removeprefix("s3://").split("/", 1)
    results = {(r["model"], r["example"]): r for r in map(json.loads, pipeline.store_client().get_object(bucket, key).read().decode().splitlines())}
    tab.open(console + "evaluations/router-vs-base?samples=10")
    assert tab.page.locator("table.scores tbody tr").count() == 2
    assert tab.page.locator("table.scores .interval").count() == 4, "an interval bar per model and grader"
    samples = tab.page.locator("article.sample")
    assert samples.count() == 10
    for i in range(10):
        for model in ("base", "fine-tuned"):
            answer = samples.nth(i).locator(f'.answer[data-model="{model}"]')
            record = results[(model, i)]
            assert answer.locator(".response").inner_text().strip() == record["response"].strip()
            verdict = answer.locator('.verdict[data-grader="exact_match"]')
            assert verdict.inner_text().startswith("✓" if record["scores"]["exact_match"] >= 1 else "✗")
    assert tab.errors == []


def test_the_playground_gets_its_answer_from_the_endpoint(pipeline, console, tab: Tab):
    tab.open(console + "endpoints/support")
    tab.page.select_option("#chat-model", "ticket-router")
    tab.page.fill("#chat-system", SYSTEM)
    tab.page.fill("#chat-max-tokens", "8")
    tab.page.fill("#chat-prompt", TICKET)
    tab.page.click("#chat-send")
    tab.page.wait_for_selector('#chat-log .assistant[data-done="1"]', timeout=60_000)
    assert tab.page.inner_text("#chat-log .assistant") == direct_answer(pipeline, "ticket-router")
    assert tab.errors == []


def test_a_running_job_moves_on_its_page_and_is_cancelled_from_it(pipeline, console, tab: Tab):
    from playwright.sync_api import expect

    ok(pipeline.finetune("jobs", "create", "held-console", *SMALL))
    tab.open(console + "jobs/held-console")  # opened before it trains: what follows comes from the live refresh
    expect(tab.page.locator("#stat-step")).to_have_text(re.compile(rf"^{HELD_STEP}/"), timeout=240_000)
    assert tab.page.locator("#loss-chart .train-point").count() == HELD_STEP
    tab.page.once("dialog", lambda dialog: dialog.accept())
    tab.page.click("#cancel")
    tab.page.wait_for_selector(".badge.phase-cancelled", timeout=120_000)
    assert pipeline.get("finetunejobs", "held-console")["spec"]["cancel"] is True
    assert tab.page.locator("#cancel").count() == 0, "no cancel button on an ended job"
    assert tab.errors == []


def test_the_download_button_gives_the_verified_model_as_a_zip(pipeline, console, tab: Tab, tmp_path: Path):
    tab.open(console + "jobs/ticket-router")
    with tab.page.expect_download() as download:
        tab.page.click("#download")
    archive = tmp_path / "model.zip"
    download.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("ticket-router/manifest.json"))
        for entry in manifest["files"]:
            assert hashlib.sha256(zf.read(f"ticket-router/{entry['path']}")).hexdigest() == entry["sha256"]
    assert tab.errors == []


def test_the_console_answers_only_its_own_host_and_its_own_pages_writes(console):
    port = console.rstrip("/").rsplit(":", 1)[1]
    forged = urllib.request.Request(console + "jobs", headers={"Host": f"evil.example:{port}"})
    with pytest.raises(urllib.error.HTTPError) as wrong_host:
        urllib.request.urlopen(forged, timeout=30)
    assert wrong_host.value.code == 421
    cross_site = urllib.request.Request(console + "jobs/ticket-router/cancel", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(cross_site, timeout=30)
    assert refused.value.code == 403
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(console + "jobs/no-such-job", timeout=30)
    assert missing.value.code == 404 and "finetunejob no-such-job not found" in missing.value.read().decode()
