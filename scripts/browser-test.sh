#!/usr/bin/env bash
# Browser test of the admin status page: starts two tiny HTTP backends and a
# ringlb (debug build) with an admin token, drives headless Chromium through
# Selenium (the Debian packages chromium, chromium-driver, python3-selenium;
# no downloads), and checks that:
#   - the page lists both backends as HEALTHY,
#   - Drain without the token shows the API's error and changes nothing,
#   - Drain with the token (typed in the page) turns the row DRAINING, and
#     the JSON API agrees,
#   - a weight typed in the row is applied.
# Saves a screenshot to docs/status-page.png. Loopback only; everything it
# starts is stopped by PID on exit.
#
#   sudo apt-get install -y chromium chromium-driver python3-selenium
#   scripts/browser-test.sh
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
for tool in chromium chromedriver python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y chromium chromium-driver python3-selenium curl)" >&2; exit 2; }
done
# Debian's python3-selenium lives with /usr/bin/python3 (a pyenv or venv
# python3 first on PATH would not see it).
py=""
for candidate in python3 /usr/bin/python3; do
  if "$candidate" -c 'import selenium' 2>/dev/null; then py=$candidate; break; fi
done
[ -n "$py" ] || { echo "missing python3-selenium" >&2; exit 2; }

cargo build -q -p lb-bin --manifest-path "$repo/Cargo.toml"
bin="$repo/target/debug/ringlb"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
be1=$(free_port); be2=$(free_port); lb=$(free_port); admin=$(free_port)
(cd "$work" && exec "$py" -m http.server "$be1" --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)
(cd "$work" && exec "$py" -m http.server "$be2" --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)
cat > "$work/ringlb.toml" <<EOF
[global]
workers = 1
admin = "127.0.0.1:$admin"
admin_token = "browser-test-token"
shutdown_timeout = "1s"

[[service]]
name = "artifactory"
listen = ["127.0.0.1:$lb"]

[service.health]
kind = "tcp"
interval = "1s"
timeout = "500ms"
rise = 1

[[service.backend]]
name = "art1"
address = "127.0.0.1:$be1"

[[service.backend]]
name = "art2"
address = "127.0.0.1:$be2"
weight = 100
EOF
"$bin" --config "$work/ringlb.toml" >"$work/ringlb.log" 2>&1 & pids+=($!)

deadline=$((SECONDS + 20))
until curl -sf "http://127.0.0.1:$admin/router/api/v1/system/health" >/dev/null; do
  if (( SECONDS > deadline )); then echo "ringlb did not become healthy:" >&2; cat "$work/ringlb.log" >&2; exit 1; fi
  sleep 0.2
done
# Some traffic, so the counters show something.
for i in 1 2 3 4 5 6; do
  curl -s -o /dev/null "http://127.0.0.1:$lb/" || true
  curl -s -o /dev/null --interface 127.0.0.2 "http://127.0.0.1:$lb/" || true
done

ADMIN="http://127.0.0.1:$admin" PROFILE="$work/chromium" SHOT="$repo/docs/status-page.png" "$py" - <<'PY'
import json, os, urllib.request
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.support.ui import WebDriverWait

admin = os.environ["ADMIN"]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--user-data-dir=" + os.environ["PROFILE"], "--window-size=1400,700"]:
    opts.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
# The page refreshes every second and replaces each state badge as it does:
# an element found a moment ago can be gone when it is read. Every read and
# click goes through `wait`, which tries again on a stale or missing element.
wait = WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))

def api(path):
    with urllib.request.urlopen(admin + path, timeout=5) as r:
        return json.load(r)

def backend(name):
    return next(b for b in api("/api/v1/services")["services"][0]["backends"] if b["name"] == name)

def row(name):
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-backend="{name}"]')

def badge(name):
    return row(name).find_element(By.CSS_SELECTOR, ".badge").text

def click(name, css):
    wait.until(lambda d: row(name).find_element(By.CSS_SELECTOR, css).click() or True)

try:
    driver.get(admin + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-backend]")) == 2)
    wait.until(lambda d: badge("art1") == "HEALTHY" and badge("art2") == "HEALTHY")
    print("page lists art1, art2: HEALTHY")

    # Drain without the token: the API refuses, the page says so.
    click("art1", 'button[data-action="drain"]')
    wait.until(lambda d: "admin token" in d.find_element(By.ID, "notice").text)
    assert backend("art1")["admin"] == "enabled", "drain without token changed state"
    print("drain without token refused:", driver.find_element(By.ID, "notice").text)

    # With the token typed in the page.
    driver.find_element(By.ID, "token").send_keys("browser-test-token")
    click("art1", 'button[data-action="drain"]')
    wait.until(lambda d: badge("art1") == "DRAINING")
    assert backend("art1")["admin"] == "drain"
    wait.until(lambda d: row("art1").find_element(By.CSS_SELECTOR, 'button[data-action="drain"]').get_attribute("disabled"))
    print("drain with token: art1 DRAINING (API agrees)")

    # Weight, typed in the row.
    w = row("art2").find_element(By.CSS_SELECTOR, "input[type=number]")
    w.clear()
    w.send_keys("250")
    wait.until(lambda d: row("art2").find_element(By.XPATH, ".//button[text()='Set']").click() or True)
    wait.until(lambda d: backend("art2")["weight"] == 250)
    wait.until(lambda d: "weight 250" in d.find_element(By.ID, "notice").text)
    print("weight of art2 set to 250")

    # Let one more refresh pass so the screenshot shows the steady state.
    live = driver.find_element(By.ID, "live")
    seen = live.text
    wait.until(lambda d: live.text != seen and live.get_attribute("class") == "ok")
    driver.save_screenshot(os.environ["SHOT"])
    print("screenshot:", os.environ["SHOT"])
finally:
    driver.quit()
PY
echo "browser test passed"
