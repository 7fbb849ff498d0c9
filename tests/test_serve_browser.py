"""The serve page in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

The server runs on a free local port against the tiny run (tests/test_serve.py's
``running_server``). The test uploads a WAV through the page's file picker,
waits for its card, compares the top genre shown with ``--mode=predict``'s for
the same file, uploads a text file and reads the error shown, and saves a
screenshot in its tmp dir. Nothing downloads a browser: it uses the system's
chromium and chromedriver, and skips only when they are not installed
(``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.modes import predict
from tests.test_serve import MAX_SECONDS
from tests.test_serve import running_server
from tests.test_serve import write_inputs

CHROMIUM = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser'))), None)
CHROMEDRIVER = shutil.which('chromedriver')

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason='needs the system chromium and chromedriver (apt-get install chromium '
           'chromium-driver; .ci/run installs them)')


@pytest.fixture
def browser():
  os.environ['SE_OFFLINE'] = 'true'  # selenium-manager must never fetch a browser or driver
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu',
              '--window-size=900,1200'):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
  try:
    yield driver
  finally:
    driver.quit()


def _card(driver, name: str, timeout: float = 120.0):
  """The card of ``name`` once it holds an answer or an error."""
  selector = f'section.card[data-name="{name}"]'

  def ready(d):
    cards = d.find_elements(By.CSS_SELECTOR, selector)
    return cards[0] if cards and cards[0].get_attribute('data-state') in ('done', 'error') else False

  return WebDriverWait(driver, timeout).until(ready)


def test_page_classifies_an_upload_like_predict_and_shows_errors(
    browser, tiny_run_dir, tmp_path):
  inputs = write_inputs(tmp_path / 'inputs')
  out = str(tmp_path / 'predictions.json')
  predict.predict_paths(workdir_lib.load_workdir_config(tiny_run_dir), tiny_run_dir,
                        predict.PredictOptions(paths=(inputs['song.wav'],), output='json',
                                               output_file=out,
                                               reading=predict.Options(max_seconds=MAX_SECONDS)))
  with open(out, encoding='utf-8') as f:
    expected = json.load(f)['results'][0]

  with running_server(tiny_run_dir) as bound:
    browser.get(bound.url)
    WebDriverWait(browser, 30).until(
        lambda d: 'Checkpoint step' in d.find_element(By.ID, 'model').text)
    picker = browser.find_element(By.ID, 'files')
    picker.send_keys(inputs['song.wav'])
    card = _card(browser, 'song.wav')
    assert card.get_attribute('data-state') == 'done', card.text
    top = card.find_element(By.CSS_SELECTOR, '.top-genre')
    assert top.get_attribute('data-genre') == expected['top_k'][0]['genre']
    assert top.text == expected['genre']
    shown = [e.text for e in card.find_elements(By.CSS_SELECTOR, 'td.genre')]
    assert shown == [t['genre'] for t in expected['top_k']]
    assert card.find_elements(By.CSS_SELECTOR, 'svg.timeline rect')  # 3 segments: a picture

    picker.send_keys('\n'.join(inputs[n] for n in ('notes.txt', 'long.wav', 'big.wav')))
    card = _card(browser, 'notes.txt')
    assert card.get_attribute('data-state') == 'error'
    assert 'not a readable audio file' in card.find_element(By.CSS_SELECTOR, '.error').text
    card = _card(browser, 'long.wav')
    assert card.get_attribute('data-state') == 'error'
    assert '--max_seconds' in card.find_element(By.CSS_SELECTOR, '.error').text
    card = _card(browser, 'big.wav')  # over --max_upload_mb: refused by the page, not sent
    assert card.get_attribute('data-state') == 'error'
    assert '--max_upload_mb' in card.find_element(By.CSS_SELECTOR, '.error').text

    shot = tmp_path / 'serve_page.png'
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
