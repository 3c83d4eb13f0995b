#!/usr/bin/env bash
# Browser test of the admin status page: starts two tiny HTTP backends and a
# ringlb (debug build) with an admin token, drives headless Chromium through
# Selenium (the Debian packages chromium, chromium-driver, python3-selenium;
# no downloads), and checks that:
#   - the page lists both backends as HEALTHY,
#   - Drain without the token shows the API's error and changes nothing,
#   - Drain with the token (typed in the page) turns the row DRAINING, and
#     the JSON API agrees,
#   - a weight typed in the row is applied,
#   - each backend has its two sparklines (new connections/s, bytes/s) and
#     a health strip, and the sparklines move while traffic flows (the
#     script makes some: a bounded loop of requests from two sources),
#   - when a backend stops, its strip gains a red segment whose hover text
#     names the probe's reason.
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
be2_pid=$!
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

ADMIN="http://127.0.0.1:$admin" LB_PORT="$lb" BE2_PID="$be2_pid" PROFILE="$work/chromium" SHOT="$repo/docs/status-page.png" "$py" - <<'PY'
import http.client, json, os, signal, threading, time, urllib.request
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
             "--user-data-dir=" + os.environ["PROFILE"], "--window-size=1700,560"]:
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

def traffic(seconds, stop):
    # Bounded in count and time: at most 600 requests, for at most
    # `seconds`, from eight loopback sources (Maglev spreads them over both
    # backends), at a varying pace so the sparklines have a shape.
    end = time.monotonic() + seconds
    for i in range(600):
        if stop.is_set() or time.monotonic() > end:
            return
        for src in [f"127.0.0.{n}" for n in range(1, 9)]:
            try:
                c = http.client.HTTPConnection("127.0.0.1", int(os.environ["LB_PORT"]), timeout=2,
                                               source_address=(src, 0))
                c.request("GET", "/")
                c.getresponse().read()
                c.close()
            except OSError:
                pass
        time.sleep(0.05 if (i // 20) % 2 == 0 else 0.2)

def spark_d(name, kind):
    return row(name).find_element(By.CSS_SELECTOR, f"svg.spark-{kind} path.line").get_attribute("d")

def click(name, css):
    wait.until(lambda d: row(name).find_element(By.CSS_SELECTOR, css).click() or True)

stop = threading.Event()
try:
    driver.get(admin + "/")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr[data-backend]")) == 2)
    wait.until(lambda d: badge("art1") == "HEALTHY" and badge("art2") == "HEALTHY")
    print("page lists art1, art2: HEALTHY")

    # Pictures: per backend, two sparklines and a health strip.
    for name in ("art1", "art2"):
        wait.until(lambda d: len(row(name).find_elements(By.CSS_SELECTOR, "svg.spark")) == 2
                   and len(row(name).find_elements(By.CSS_SELECTOR, "svg.strip rect.seg")) >= 1)
    print("each backend has 2 sparklines and a health strip")
    # Traffic flows from here to the screenshot.
    load = threading.Thread(target=traffic, args=(150, stop), daemon=True)
    load.start()
    for name in ("art1", "art2"):
        wait.until(lambda d: sum(backend(name)["history"]["new_connections"][-10:]) > 0)
        for kind in ("conns", "bytes"):
            wait.until(lambda d: spark_d(name, kind).count("L") >= 2)
            before = spark_d(name, kind)
            wait.until(lambda d: spark_d(name, kind) != before)
        rate = row(name).find_element(By.CSS_SELECTOR, ".rate").text
        print(f"{name}: sparklines move with traffic (now {rate})")

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

    click("art1", 'button[data-action="enable"]')
    wait.until(lambda d: badge("art1") == "HEALTHY")
    print("enable with token: art1 HEALTHY again")

    # A backend stops: its strip turns red from then on, and the red
    # segment's hover text says why.
    os.kill(int(os.environ["BE2_PID"]), signal.SIGTERM)
    wait.until(lambda d: badge("art2") == "UNHEALTHY")
    reason = next(t for t in reversed(backend("art2")["transitions"]) if t["to"] == "down")["reason"]
    def down_title(d):
        segs = row("art2").find_elements(By.CSS_SELECTOR, "svg.strip rect.seg-down title")
        return segs[-1].get_attribute("textContent") if segs else False
    title = wait.until(down_title)
    assert "up \u2192 down" in title and reason in title, (title, reason)
    print("art2 stopped: strip segment", repr(title))

    # For the screenshot: a minute of pictures (the traffic goes on; the
    # wait ends when the samples are there, or after 100 s).
    WebDriverWait(driver, 100).until(lambda d: len(backend("art1")["history"]["new_connections"]) >= 60)
    stop.set()
    load.join(timeout=5)
    # Let one more refresh pass so the screenshot shows the steady state.
    live = driver.find_element(By.ID, "live")
    seen = live.text
    wait.until(lambda d: live.text != seen and live.get_attribute("class") == "ok")
    driver.save_screenshot(os.environ["SHOT"])
    print("screenshot:", os.environ["SHOT"])
finally:
    stop.set()
    driver.quit()
PY
echo "browser test passed"
