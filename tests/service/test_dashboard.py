"""The web dashboard (api/dashboard/) and the offline /docs page.

The first tests read the pages over the ASGI app: everything they load comes from the package, nothing from a CDN.
The browser test drives Debian's headless Chromium through its chromium-driver with selenium (both run offline;
playwright would download a browser build of its own) against `peftsearch serve` embedded on the tiny model:
paste the key, fail an upload and see the loader's file:line inline, upload, submit a job from the form, follow it
to the end, check its plots and heat map against the API, download the archive and check its sha256, cancel a
second job while it runs, filter the jobs table, open /docs. Screenshots go to $PEFTSEARCH_SCREENSHOTS (the
committed ones: `PEFTSEARCH_SCREENSHOTS=docs`) or the test's temporary directory.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from store.settings import Settings

from .support import ROOT, TINY, TINY_SEARCH, free_port, start, stop, wait_until

STATIC = ROOT / "api" / "dashboard" / "static"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# A job that trains until it is cancelled (minutes on the tiny model): the cancel button's subject.
LONG_SEARCH = {"schedule": {"rounds": 2, "steps_per_round": 20000, "eval_examples": 16, "unlearned": "prune"},
               "train": {"steps": 20000, "batch_size": 8, "max_length": 16}}


@pytest.fixture
def app_client(tmp_path):
    with TestClient(create_app(Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path}/db.sqlite3"))) as client:
        yield client


def test_the_dashboard_and_its_assets_come_from_the_package(app_client):
    page = app_client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
    assert {"static/dashboard/app.js", "static/dashboard/app.css"} <= set(assets)
    for asset in assets:
        response = app_client.get("/" + asset)
        assert response.status_code == 200 and response.content, asset
    assert "http" not in page.text.replace('href="docs"', "")  # no external URL at all
    assert not {"/", "/docs"} & set(app_client.get("/openapi.json").json()["paths"])


def test_the_openapi_page_loads_swagger_ui_from_this_server(app_client):
    for page_url, needed in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        page = app_client.get(page_url)
        assert page.status_code == 200
        urls = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert urls and all(u.startswith("/static/docs/") for u in urls), urls
        assert not re.search(r"https?://", page.text), page.text
        for name in needed:
            assert f"/static/docs/{name}" in urls
        for url in urls:
            assert app_client.get(url).status_code == 200, url
    # ReDoc's bundle fetches its maker's logo from a CDN unless the page forbids images from elsewhere
    assert app_client.get("/redoc").headers["content-security-policy"] == "img-src 'self' data:"
    bundle = app_client.get("/static/docs/swagger-ui-bundle.js").text
    assert re.search(r'"5\.\d+\.\d+"', bundle)  # Swagger UI 5 renders OpenAPI 3.1, which FastAPI writes
    assert app_client.get("/openapi.json").json()["openapi"].startswith("3.1")


def test_every_static_file_is_package_data():
    from setuptools.config.pyprojecttoml import read_configuration  # what setuptools itself reads

    patterns = read_configuration(ROOT / "pyproject.toml")["tool"]["setuptools"]["package-data"]["api"]
    files = [p.relative_to(ROOT / "api").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


# ----------------------------------------------------------------------------------------------- in a browser


@pytest.fixture
def served(tmp_path, tiny_model):
    """`peftsearch serve` embedded on the tiny model, with a key; yields (base URL, key)."""
    from store.db import session_factory
    from store.keys import create_key

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")
           and not k.startswith("PEFTSEARCH_")}
    env.update(PEFTSEARCH_HOME=str(home), PEFTSEARCH_MODELS=json.dumps({TINY: tiny_model}),
               PEFTSEARCH_HEARTBEAT_S="0.5")
    port, log = free_port(), tmp_path / "serve.log"
    server = start([sys.executable, "-m", "peftsearch.cli", "serve", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/readyz"), 120, "the server to be ready", [log])
        with session_factory(f"sqlite:///{(home / 'peftsearch.sqlite3').resolve()}").begin() as session:
            _, key = create_key(session, "dashboard")
        yield base, key
    finally:
        stop(server)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no Chromium found: `apt-get install -y chromium chromium-driver` (Debian) runs this test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--lang=en-US"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = tmp_path / "downloads"
    driver.shots = Path(os.environ.get("PEFTSEARCH_SCREENSHOTS") or tmp_path / "shots")
    driver.shots.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    """A PNG of the whole page (beyond the window's height)."""
    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    (driver.shots / f"dashboard-{name}.png").write_bytes(base64.b64decode(png["data"]))


@pytest.mark.slow
def test_a_job_through_the_dashboard(served, browser, toy_files, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, key = served
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    driver = browser
    find = driver.find_element

    def wait(check, timeout: float = 60, what: str = "the page"):
        # the page redraws while polling the API: an element found a moment ago may be gone, so look again
        return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]
                             ).until(lambda _: check(), f"timed out: {what}")

    def text(selector: str) -> str:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return found[0].text if found else ""

    def status() -> str:
        badge = driver.find_elements(By.CSS_SELECTOR, "#job-head .badge[data-status]")
        return badge[0].get_attribute("data-status") if badge else ""

    # The key: asked for, checked against the API, kept across page loads.
    driver.get(base + "/")
    assert "Paste an API key" in text("#view .notice")
    find(By.ID, "key").send_keys(key)
    find(By.CSS_SELECTOR, "#key-form button").click()
    wait(lambda: text("#key-state") == "key accepted", what="the key to be accepted")
    wait(lambda: "No jobs yet" in text("#jobs"), what="the empty jobs table")
    driver.refresh()
    wait(lambda: "No jobs yet" in text("#jobs"), what="the jobs table after a reload")

    # Upload: a broken file first, whose file:line error shows next to its field; then the toy task.
    train, dev = toy_files["csv"]
    broken = tmp_path / "broken_train.csv"
    broken.write_text("text,label\na good film,1\na dull film\n")
    driver.get(base + "/#/datasets")
    wait(lambda: driver.find_elements(By.ID, "upload"))
    find(By.ID, "train").send_keys(str(broken))
    find(By.ID, "dev").send_keys(str(dev))
    find(By.ID, "upload-submit").click()
    wait(lambda: text('[data-error-for="train"]'), what="the upload's error")
    assert text('[data-error-for="train"]') == "broken_train.csv:3: expected 2 fields as in the header, found 1"
    assert text('[data-error-for="dev"]') == ""
    shot(driver, "upload-error")
    find(By.ID, "train").clear()
    find(By.ID, "train").send_keys(str(train))
    find(By.ID, "name").send_keys("toy sentiment")
    find(By.ID, "upload-submit").click()
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#datasets tr[data-dataset]"), what="the dataset in the list")
    (dataset,) = api.get("/v1/datasets").json()["data"]
    assert dataset["name"] == "toy sentiment" and text('[data-error-for="train"]') == ""

    # Submit a tiny search from the form, reached from the dataset's row.
    find(By.CSS_SELECTOR, f'#datasets tr[data-dataset="{dataset["id"]}"] a').click()
    wait(lambda: driver.find_elements(By.ID, "new-job"))
    assert Select(find(By.ID, "dataset_id")).first_selected_option.get_attribute("value") == dataset["id"]
    Select(find(By.ID, "model")).select_by_value(TINY)
    find(By.ID, "budget").clear()
    find(By.ID, "budget").send_keys("2%")
    find(By.ID, "search").send_keys(json.dumps({**TINY_SEARCH, "schedule": {**TINY_SEARCH["schedule"], "rounds": 0}}))
    find(By.ID, "submit").click()  # rounds 0 is refused: the API's error shows under the overrides
    wait(lambda: text('[data-error-for="search"]'), what="the refused search's error")
    assert "search.schedule.rounds" in text('[data-error-for="search"]')
    find(By.ID, "search").clear()
    find(By.ID, "search").send_keys(json.dumps(TINY_SEARCH))
    shot(driver, "new-job")
    find(By.ID, "submit").click()
    wait(lambda: re.search(r"#/jobs/job_\w+$", driver.current_url), what="the job's page")
    job_id = driver.current_url.rsplit("/", 1)[1]
    wait(lambda: status() in ("succeeded", "failed", "cancelled"), 180, f"job {job_id} to finish")
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#heatmap table"), what="the heat map")

    # What the page shows is what the API says.
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" == status(), job
    result, config = job["result"], job["result"]["configuration"]
    assert text("#result-metric b") == f"{result['metric']:.4f}"
    rounds = api.get(f"/v1/jobs/{job_id}/rounds").json()["data"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trajectory circle.params-point")) == len(rounds) == 2
    titles = [c.get_attribute("textContent") for c in driver.find_elements(By.CSS_SELECTOR, "#trajectory circle.params-point title")]
    assert titles == [f"round {r['round']}: {r['trainable_params']:,} params" for r in rounds]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#rounds tbody tr")) == 2
    front = [p for p in result["front"] if p["metric"] is not None]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#front circle.front-point")) == len(front) == len(rounds) + 1
    chosen = driver.find_element(By.CSS_SELECTOR, "#front circle.chosen title").get_attribute("textContent")
    assert chosen.endswith("(chosen)") and f"{result['trainable_params']:,} params" in chosen
    assert len(driver.find_elements(By.CSS_SELECTOR, "#heatmap tr[data-layer]")) == len(config["layers"]) == 4
    kept = driver.find_elements(By.CSS_SELECTOR, "#heatmap td[data-kind]:not(.off)")
    assert sorted(f"{c.get_attribute('data-kind')}.{c.find_element(By.XPATH, '..').get_attribute('data-layer')}"
                  for c in kept) == sorted(config["units"])
    assert driver.find_elements(By.CSS_SELECTOR, "#loss-chart svg polyline")
    events = api.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#events tr")) == len(events)
    assert "succeeded" in [r.text.split()[-1] for r in driver.find_elements(By.CSS_SELECTOR, '#events tr[data-kind="status"]')]
    assert find(By.ID, "cancel").get_attribute("disabled") is not None
    shot(driver, "job")

    # Download: the archive lands in the browser's download folder, checked against the server's sha256.
    find(By.ID, "download").click()
    archive = browser.downloads / f"{job_id}.tar.gz"
    wait(lambda: archive.exists() and not list(browser.downloads.glob("*.crdownload")), 60, "the download")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == job["artifact"]["sha256"]
    assert "sha256 verified" in text("#download-state")

    # A long job: live progress while it runs, then the cancel button (twice: the second click confirms).
    driver.get(base + "/#/new")
    wait(lambda: driver.find_elements(By.ID, "new-job"))
    Select(find(By.ID, "model")).select_by_value(TINY)
    find(By.ID, "search").send_keys(json.dumps(LONG_SEARCH))
    find(By.ID, "submit").click()
    wait(lambda: re.search(r"#/jobs/job_\w+$", driver.current_url), what="the long job's page")
    long_id = driver.current_url.rsplit("/", 1)[1]
    wait(lambda: int(find(By.ID, "loss-chart").get_attribute("data-points") or 0) >= 3
         and driver.find_elements(By.CSS_SELECTOR, '#progress[data-phase="search"]')
         and re.fullmatch(r"[1-9][\d,]* / 20,000", text("#progress .facts div b")), 180,
         "the long job's search steps and loss samples on the page")
    assert status() == "running" and find(By.ID, "download").get_attribute("disabled") is not None
    shot(driver, "running")
    find(By.ID, "cancel").click()
    assert api.get(f"/v1/jobs/{long_id}").json()["status"] == "running"  # one click only arms the button
    find(By.ID, "cancel").click()
    wait(lambda: status() == "cancelled", 60, "the cancellation")
    assert api.get(f"/v1/jobs/{long_id}").json()["status"] == "cancelled"

    # The jobs table, all and filtered.
    driver.get(base + "/#/")
    wait(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")) == 2, what="both jobs listed")
    listed = {r.get_attribute("data-job"): r.find_element(By.CSS_SELECTOR, ".badge").text
              for r in driver.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")}
    assert listed == {job_id: "succeeded", long_id: "cancelled"}
    row = find(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"]').text
    assert f"accuracy {result['metric']:.4f}" in row and f"{result['trainable_params']:,}" in row
    assert "toy sentiment" in row
    shot(driver, "jobs")
    Select(find(By.ID, "status-filter")).select_by_value("succeeded")
    wait(lambda: [r.get_attribute("data-job") for r in driver.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")]
         == [job_id], what="the filtered table")

    # The OpenAPI page renders from this server's files.
    driver.get(base + "/docs")
    wait(lambda: "peftsearch" in text(".swagger-ui .info .title"), 60, "Swagger UI to render")
    assert len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10
    shot(driver, "openapi")

    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and "Failed to load resource" not in e["message"]]  # the refused upload and submission log those
    assert not errors, errors
