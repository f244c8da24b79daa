"""The MLflow UI in a real browser: `mlflow ui` over the tiny pipeline's store, opened in headless
Chromium through Selenium. The experiment's first screen (once the browser is switched to "Model
training", which MLflow 3.17.2 asks for whatever the experiment's kind tag says) must be the runs
table with the parent run named after the DVC experiment; the link edgeasr prints must open it with
the saved view of the four metric columns, and the expanded parent must nest one run per stage with
its values there; the parent run's page must show its note (every stage's `wer`, `sparsity`,
`size_bytes` and `emulated_latency_ms`, each stage linked to its run) with the pipeline plot; and
each model stage's run page must show its four metrics as MLflow renders them. Screenshots of every
page go to ``$EDGEASR_TEST_ARTIFACTS/mlflow-ui/`` (default ``<repo>/test-artifacts/mlflow-ui/``,
gitignored).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium (the
``test`` extra); skipped, with the reason, only when the browser or its driver is absent."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from edgeasr.tracking.note import fmt
from edgeasr.tracking.ui import FOUR_METRICS, MODEL_TRAINING, RUNS_QUERY, TAG_EXPERIMENT_KIND

from conftest import REPO, mlflow_http

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # installed by the `test` extra; without it the test says so and skips
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if webdriver is None:
    SKIP = "selenium is not installed (pip install -e '.[test]')"
elif not (CHROMIUM and CHROMEDRIVER):
    SKIP = ("no headless browser: needs Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run installs them)")
else:
    SKIP = None

needs_browser = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

ARTIFACTS = Path(os.environ.get("EDGEASR_TEST_ARTIFACTS") or REPO / "test-artifacts") / "mlflow-ui"
STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
FOUR = FOUR_METRICS  # wer, sparsity, size_bytes, emulated_latency_ms
# Which of the four a stage's run page must show, where not all: prepare reports data, not a model
# (its page is not opened); the reference recognizer (Whisper) is not ours to prune or emulate, nor
# is the cloud's LM (train_lm: its size, and its perplexity instead of a WER).
SHOWN = {"prepare": (), "reference": ("wer", "size_bytes"), "train_lm": ("size_bytes",)}
# A 2-core machine busy with training can take minutes to serve and render one page.
PAGE_TIMEOUT_S = 420
SERVER_TIMEOUT_S = 300
# Whether an element is inside every box around it (scrolled panes included) and the window.
IN_VIEW_JS = """
const r = arguments[0].getBoundingClientRect();
for (let p = arguments[0].parentElement; p; p = p.parentElement) {
  const q = p.getBoundingClientRect();
  if (r.top < q.top || r.bottom > q.bottom) return false;
}
return r.top >= 0 && r.bottom <= window.innerHeight;
"""
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1600,1200")


def js_number(x: float) -> str:
    """``x`` as the MLflow UI shows a metric: JavaScript's ``String(x)`` (shortest round-trip digits,
    exponent below 1e-6 and from 1e21 on)."""
    if x == 0:
        return "0"
    _, digits, exp = Decimal(repr(abs(x))).normalize().as_tuple()
    d = "".join(map(str, digits))
    k, n = len(d), len(d) + exp  # n: where the decimal point falls in d
    sign = "-" if x < 0 else ""
    if k <= n <= 21:
        return sign + d + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{d[:n]}.{d[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{d}"
    e = n - 1
    return f"{sign}{d[0]}{'.' + d[1:] if k > 1 else ''}e{'+' if e > 0 else '-'}{abs(e)}"


def test_js_number():
    cases = {100.0: "100", 0.5: "0.5", 83786.0: "83786", 0.0676: "0.0676", 4.6e-05: "0.000046",
             72.19889068603516: "72.19889068603516", 1.159e-16: "1.159e-16", 1e21: "1e+21",
             -2.5e-7: "-2.5e-7", 123456789012345680000.0: "123456789012345680000", 0.0: "0"}
    assert {x: js_number(x) for x in cases} == cases


@pytest.fixture
def mlflow_ui(tiny_pipeline, tmp_path) -> Iterator[str]:
    """`mlflow ui` over a copy of the tiny pipeline's store on a free port; its URL."""
    with mlflow_http(["ui", "--backend-store-uri", f"sqlite:///{tiny_pipeline.mlflow_db}"], tmp_path,
                     tiny_pipeline.env, SERVER_TIMEOUT_S) as (url, _):
        yield url


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium driven by Debian's chromedriver, with a fresh profile."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    # Selenium's own wait for chromedriver's answer (120 s for Chromium) must outlast a page load.
    driver.command_executor._client_config.timeout = PAGE_TIMEOUT_S + 60
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """Opens UI routes, waits for what they must render, and screenshots them into ARTIFACTS."""

    def __init__(self, driver, base: str):
        self.driver, self.base = driver, base
        self.shots: list[Path] = []

    def text(self) -> str:
        return "\n" + self.driver.find_element(By.TAG_NAME, "body").text + "\n"

    def has_lines(self, *lines: str) -> bool:
        """Each of ``lines`` (a line, or consecutive lines joined by newlines) is in the page text."""
        text = self.text()
        return all(f"\n{line}\n" in text for line in lines)

    def open(self, route: str, what: str, ready) -> None:
        """Open ``#/route``; wait until ``ready()`` (else fail with a screenshot), then until the page
        text stops changing."""
        self.driver.get(f"{self.base}/#/{route}")
        self.wait(what, ready)

    def wait(self, what: str, ready) -> None:
        try:
            WebDriverWait(self.driver, PAGE_TIMEOUT_S, poll_frequency=1).until(lambda _: ready())
        except TimeoutException:
            path = self.screenshot("timeout")
            pytest.fail(f"{what}: not rendered in {PAGE_TIMEOUT_S} s (screenshot {path});"
                        f" page text:\n{self.text()[-3000:]}")
        texts, deadline = [], time.monotonic() + 60
        while (len(texts) < 3 or len(set(texts[-3:])) > 1) and time.monotonic() < deadline:
            texts.append(self.text())
            time.sleep(2)
        self.close_assistant()

    def close_assistant(self) -> None:
        """MLflow 3 opens an "MLflow Assistant" side panel; closed, the page gets the whole width."""
        close = '[data-component-id="mlflow.assistant.chat_panel.close"]'
        for button in self.driver.find_elements(By.CSS_SELECTOR, close):
            if button.is_displayed():  # a script click: a first-visit popover may cover the button
                self.driver.execute_script("arguments[0].click()", button)
                time.sleep(1)

    def screenshot(self, name: str) -> Path:
        path = ARTIFACTS / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        print(f"screenshot: {path}")
        return path


def format_metric(x: float) -> str:
    """``x`` as MLflow's tables may round it (``Utils.formatMetric`` in the UI bundle): an exponent
    below 0.001, else 3, 2 or 1 decimals below 10, below 100 and from 100 on."""
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        mantissa, exp = f"{x:.3e}".split("e")
        return f"{mantissa}e{'+' if int(exp) >= 0 else '-'}{abs(int(exp))}"
    return js_number(round(x, 3 if abs(x) < 10 else 2 if abs(x) < 100 else 1))


def test_format_metric():
    cases = {0.0: "0", 4.6e-05: "4.600e-5", 0.5: "0.5", 3.14159: "3.142", 72.19889: "72.2", 83786.0: "83786"}
    assert {x: format_metric(x) for x in cases} == cases


@pytest.mark.slow
@needs_browser
def test_mlflow_ui_shows_stage_runs_and_their_metrics(tiny_pipeline, mlflow_ui, browser):
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

    client = MlflowClient(f"sqlite:///{tiny_pipeline.mlflow_db}")
    exp = client.get_experiment_by_name("edgeasr")
    assert exp.tags[TAG_EXPERIMENT_KIND] == MODEL_TRAINING
    parents = client.search_runs([exp.experiment_id], "tags.`edgeasr.kind` = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == parent.data.tags["dvc.exp_name"]  # `dvc exp run`: named after the experiment
    assert MLFLOW_RUN_NOTE in parent.data.tags
    assert "pipeline.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}  # from evaluate
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and tags.`edgeasr.kind` = 'stage'")}
    assert sorted(children) == sorted(STAGES)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    page = Page(browser, mlflow_ui)
    exp_route = f"experiments/{exp.experiment_id}"

    def metric_link(key: str):  # the metric's name in a run page's Metrics table
        return browser.find_element(By.XPATH, f"//a[normalize-space(text())='{key}']")

    def rows(run) -> list[str]:  # the runs table's rows for a run (the grid splits a row into column groups)
        return [r.text for r in browser.find_elements(By.CSS_SELECTOR, f'[role="row"][row-id="{run.info.run_id}"]')]

    def parent_row() -> bool:
        return "/runs" in browser.current_url and any(parent.info.run_name in r.splitlines() for r in rows(parent))

    # MLflow 3.17.2 opens an experiment as the browser's workflow switch says, GenAI by default (the
    # experiment's kind tag aside): recorded, then switched to "Model training" once, as the README says.
    page.open(exp_route, "the experiment page", lambda: page.has_lines("Model training"))
    page.screenshot("experiment-genai-default")
    switch = [e for e in browser.find_elements(By.XPATH, "//*[normalize-space(text())='Model training']")
              if e.is_displayed()]
    browser.execute_script("arguments[0].click()", switch[0])
    page.wait("the runs table after the switch", parent_row)
    # The experiment's first screen from now on: the runs table, the parent run named for its invocation.
    page.open(exp_route, "the experiment's first screen", parent_row)
    page.screenshot("first-screen")

    # The link every stage prints: the saved view's four metric columns; expanded, the parent nests
    # one run per stage, each with its metrics in those columns.
    def headers() -> set[str]:
        return {h.text.strip() for h in browser.find_elements(By.CSS_SELECTOR, '[role="columnheader"]')}

    page.open(f"{exp_route}/runs?{RUNS_QUERY}", "the runs table in the saved view",
              lambda: parent_row() and set(FOUR) <= headers())
    browser.find_element(By.CSS_SELECTOR, f'[row-id="{parent.info.run_id}"] [col-id*="Run Name"] button').click()
    page.wait("the parent run's child rows", lambda: all(rows(run) for run in children.values()))
    page.screenshot("runs-table")
    for stage, run in children.items():
        cells = {line for r in rows(run) for line in r.splitlines()}
        assert stage in cells, (stage, rows(run))
        for key in set(FOUR) & set(run.data.metrics):
            value = run.data.metrics[key]
            assert {js_number(value), format_metric(value)} & cells, (stage, key, value, rows(run))

    # The parent run's page: its note holds every stage's four metrics, each stage linked to its run
    # (the same links as "Child runs"), and the pipeline plot.
    def note_rows() -> list[list[str]]:
        return [[c.text.strip() for c in tr.find_elements(By.TAG_NAME, "td")] for tr in browser.find_elements(
            By.XPATH, "//table[.//th[normalize-space()='emulated_latency_ms']]//tbody/tr")]

    def child_links() -> dict[str, set[str]]:
        return {run.info.run_id: {a.text.strip(" ,") for a in browser.find_elements(
            By.CSS_SELECTOR, f'a[href$="/runs/{run.info.run_id}"]')} for run in children.values()}

    page.open(f"{exp_route}/runs/{parent.info.run_id}", "the parent run page with its note",
              lambda: page.has_lines(parent.info.run_id, "Child runs") and all(child_links().values())
              and len(note_rows()) == len(STAGES))
    # The description box shows its first lines; "Show more" unfolds the whole note.
    browser.execute_script("arguments[0].click()", browser.find_element(By.XPATH, "//*[normalize-space(text())='Show more']"))
    page.wait("the whole note", lambda: note_rows()[-1][:1] == [STAGES[-1]])
    table = browser.find_element(By.XPATH, "//table[.//th[normalize-space()='emulated_latency_ms']]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", table)
    time.sleep(1)
    page.screenshot("parent-run-note")
    plot = browser.find_element(By.CSS_SELECTOR, 'img[src*="path=pipeline.png"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", plot)
    page.wait("the pipeline plot in the note", lambda: browser.execute_script("return arguments[0].naturalWidth", plot) > 0)
    page.screenshot("parent-run-plot")
    links = child_links()
    assert note_rows() == [[stage, *(fmt(children[stage].data.metrics.get(k)) for k in FOUR)] for stage in STAGES]
    for stage, run in children.items():
        assert links[run.info.run_id] == {stage}

    # Each stage's run page: the four metrics and their values, rows of its Metrics table.
    for stage in STAGES:
        run = children[stage]
        keys = SHOWN.get(stage, FOUR)
        if not keys:
            continue
        assert set(keys) <= set(run.data.metrics), (stage, sorted(run.data.metrics))
        rows_shown = [f"{key}\n{js_number(run.data.metrics[key])}" for key in keys]  # name, value: one row
        page.open(f"{exp_route}/runs/{run.info.run_id}", f"the {stage} run page with {rows_shown}",
                  lambda: page.has_lines(stage, run.info.run_id, *rows_shown))
        # Screenshots of the Metrics table (it scrolls on its own) until each of the rows was in view.
        pending, n = list(keys), 0
        while pending:
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric_link(pending[0]))
            time.sleep(1)
            n += 1
            page.screenshot(stage if n == 1 else f"{stage}-{n}")
            pending = [k for k in pending[1:] if not browser.execute_script(IN_VIEW_JS, metric_link(k))]
    print("screenshots:", *page.shots, sep="\n  ")
