#!/usr/bin/env python3
"""An operator and a viewer in the console, in a real browser (Debian's headless Chromium):
sign in, watch the fleet, see a unit the test kills turn offline without a reload, acknowledge
its alert, find that in the audit trail; then a viewer, who can see but not act. Prints
"READY-TO-KILL" when the fleet page is up (the Swift test then kills the unit) and, last, one
JSON line of what it saw for the test to check.

  console_flow.py --url URL --operator NAME:PASSWORD --viewer NAME:PASSWORD --unit UNIT --shots DIR
"""
import argparse, json, os, sys

from selenium.webdriver.common.by import By

from webpage import chromium, submit, wait


def sign_in(driver, url, credentials):
    name, password = credentials.split(":", 1)
    driver.get(url + "/login")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    submit(driver, driver.find_element(By.ID, "sign-in"))
    wait(driver, 20, lambda d: d.find_elements(By.ID, "fleet"))


def main():
    parser = argparse.ArgumentParser()
    for option in ("--url", "--operator", "--viewer", "--admin", "--unit", "--live-unit", "--new-unit", "--shots"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    os.makedirs(args.shots, exist_ok=True)
    shot = lambda driver, name: driver.save_screenshot(os.path.join(args.shots, "console-%s.png" % name))
    out = {}
    driver = chromium("--window-size=1280,800")
    try:
        driver.get(args.url + "/")
        out["unsignedLandsOnLogin"] = driver.current_url.endswith("/login")
        shot(driver, "login")
        sign_in(driver, args.url, args.operator)
        out["rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#fleet tbody tr[id^='unit-']"))
        state = lambda d: d.find_element(By.CSS_SELECTOR, "#unit-%s [data-field='state']" % args.unit).text
        wait(driver, 20, lambda d: state(d) == "online")
        driver.execute_script("window.__notReloaded = 42")
        shot(driver, "fleet")
        print("READY-TO-KILL", flush=True)
        wait(driver, 60, lambda d: state(d) == "offline")
        out["offlineLive"] = driver.execute_script("return window.__notReloaded") == 42
        out["offlineCount"] = driver.find_element(By.ID, "count-offline").text
        shot(driver, "fleet-offline")

        driver.get(args.url + "/alerts")
        row = driver.find_element(By.XPATH, "//table[@id='open-alerts']//tr[td[2][text()='%s']]" % args.unit)
        alert_id = row.get_attribute("id").split("-", 1)[1]
        out["alertId"] = alert_id
        acknowledge = driver.find_element(By.ID, "ack-" + alert_id)
        submit(driver, acknowledge, 20)
        wait(driver, 20, lambda d: "acknowledged by" in d.find_element(By.ID, "alert-" + alert_id).text)
        out["acknowledgedBy"] = driver.find_element(By.ID, "alert-" + alert_id).text.split("acknowledged by ")[-1].strip()
        shot(driver, "alerts")
        driver.get(args.url + "/audit")
        out["auditShowsAck"] = "alerts ack" in driver.find_element(By.ID, "audit").text
        shot(driver, "audit")
        # The payments ledger, its CSV export (fetched as the page's link would download it) and
        # the revenue charts.
        driver.get(args.url + "/payments")
        out["ledgerRows"] = len(driver.find_elements(By.CSS_SELECTOR, "#ledger tbody tr[id^='payment-']"))
        out["pageRevenue"] = {row.get_attribute("data-currency"): int(row.find_element(By.CSS_SELECTOR, "[data-field=revenue]").get_attribute("data-minor"))
                              for row in driver.find_elements(By.CSS_SELECTOR, "#totals tbody tr[data-currency]")}
        shot(driver, "payments")
        out["csv"] = driver.execute_async_script("""
            var done = arguments[arguments.length - 1];
            fetch(document.getElementById('export').getAttribute('href')).then(function(r){ return r.text(); }).then(done);
        """)
        driver.get(args.url + "/revenue")
        out["revenueBars"] = {svg.get_attribute("id"): sum(int(r.get_attribute("data-value")) for r in svg.find_elements(By.TAG_NAME, "rect"))
                              for svg in driver.find_elements(By.CSS_SELECTOR, "svg.chart")}
        shot(driver, "revenue")
        # The unit the test killed: its timeline ends offline.
        driver.get(args.url + "/machines/" + args.unit)
        out["machineStates"] = [r.get_attribute("data-state") for r in driver.find_elements(By.CSS_SELECTOR, "#timeline rect[data-state]")]
        # A live unit gets a new configuration from its page, and applies it.
        driver.get(args.url + "/machines/" + args.live_unit)
        driver.find_element(By.ID, "config-pairs").send_keys("maxAmount=2500")
        publish = driver.find_element(By.ID, "config-set")
        submit(driver, publish, 20)
        out["configNotice"] = driver.find_element(By.ID, "notice").text

        def applied(d):
            d.refresh()
            return "applied" in d.find_element(By.CSS_SELECTOR, "#configs tbody tr").text
        wait(driver, 60, applied, poll=0.5)
        out["machineNewestConfig"] = driver.find_element(By.CSS_SELECTOR, "#configs tbody tr").text
        out["machineCode"] = len(driver.find_elements(By.CSS_SELECTOR, "#payment-code svg path"))
        shot(driver, "machine")
        driver.get(args.url + "/codes")
        out["stickers"] = len(driver.find_elements(By.CSS_SELECTOR, "#sheet figure.sticker"))
        shot(driver, "codes")
        # A firmware rollout to one live unit, watched without a reload until it ends.
        driver.get(args.url + "/firmware")
        for field, value in (("rollout-units", "wash"), ("rollout-wave", "100"), ("rollout-max-failures", "1"), ("rollout-timeout", "5")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        start = driver.find_element(By.ID, "rollout-start")
        submit(driver, start, 20)
        driver.execute_script("window.__notReloaded = 43")
        wait(driver, 60, lambda d: d.find_element(By.ID, "rollout-state").text not in ("", "running"))
        out["rolloutState"] = driver.find_element(By.ID, "rollout-state").text
        out["rolloutUnit"] = driver.find_element(By.CSS_SELECTOR, "tr[data-unit='wash-01'] [data-field='state']").text
        out["rolloutLive"] = driver.execute_script("return window.__notReloaded") == 43
        shot(driver, "rollout")
        driver.get(args.url + "/firmware")
        shot(driver, "firmware")
        submit(driver, driver.find_element(By.ID, "logout"))
        wait(driver, 20, lambda d: d.current_url.endswith("/login"))

        sign_in(driver, args.url, args.viewer)
        driver.get(args.url + "/alerts")
        out["viewerButtons"] = len(driver.find_elements(By.CSS_SELECTOR, "button[id^='ack-']"))
        # The viewer forges the form the page did not give them: refused.
        out["viewerPost"] = driver.execute_async_script("""
            var done = arguments[arguments.length - 1];
            var csrf = document.querySelector('input[name=csrf]').value;
            fetch('/alerts/%s/ack', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                                      body: 'csrf=' + encodeURIComponent(csrf)}).then(function(r){ done(r.status); });
        """ % alert_id)
        shot(driver, "viewer-alerts")
        submit(driver, driver.find_element(By.ID, "logout"))
        wait(driver, 20, lambda d: d.current_url.endswith("/login"))

        # An admin provisions a unit; its bundle downloads once.
        sign_in(driver, args.url, args.admin)
        driver.get(args.url + "/provision")
        driver.find_element(By.ID, "machine").send_keys(args.new_unit)
        provision = driver.find_element(By.ID, "provision")
        submit(driver, provision, 30)
        out["provisioned"] = driver.find_element(By.ID, "provisioned").text
        shot(driver, "provision")
        fetch = """
            var done = arguments[arguments.length - 1];
            fetch(document.getElementById('bundle').getAttribute('href')).then(function(r){
              if (r.status !== 200) { done([r.status, null]); return; }
              r.json().then(function(j){ done([r.status, j.machineId]); });
            });"""
        out["bundleFirst"] = driver.execute_async_script(fetch)
        out["bundleSecond"] = driver.execute_async_script(fetch)
    finally:
        driver.quit()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
