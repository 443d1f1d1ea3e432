#!/usr/bin/env python3
"""One customer at a machine, in a real browser (Debian's headless Chromium at phone size):
open the payment page a payment code points at, choose an amount, pay with a test card at the
simulated provider's checkout, and wait for the page to show the outcome. Prints one JSON line
for the Swift test that started the fleet to check against the agent and the provider.

  pay_flow.py --url URL --choose Wash --card 4242424242424242 --expect captured --shots DIR --name approve
"""
import argparse, json, sys, time

from selenium.webdriver.common.by import By

from webpage import chromium, submit, wait

CARDS = {"approve": "4242424242424242", "decline": "4000000000000002", "timeout": "4000000000000119",
         "capture-fails": "4000000000000341", "webhook": "4000000000003220"}


def browser():
    """A phone-sized page, as a customer at the machine sees it."""
    return chromium(mobile={
        "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 2.0},
        "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36"})


def page_bytes(driver):
    """Bytes of the page and everything it loaded (decoded bodies)."""
    return driver.execute_script("""
        var n = performance.getEntriesByType('navigation')[0];
        var total = n ? n.decodedBodySize : 0;
        performance.getEntriesByType('resource').forEach(function(r){ total += r.decodedBodySize; });
        return total;""")


def profile(driver, args, out, shot):
    """My payments: the payment is listed; a profile is kept only with consent; it can be deleted."""
    name, email = args.profile.split(",", 1)
    base = args.url.split("/m/")[0]
    driver.get(base + "/me")
    out["userId"] = driver.find_element(By.ID, "user-id").text
    out["listed"] = out["paymentId"] in driver.find_element(By.ID, "payments").get_attribute("innerHTML")

    def fill(consent):
        for field, value in (("name", name), ("email", email)):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        if consent:
            driver.find_element(By.NAME, "consent").click()
        submit(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/me/profile'] button"), args.timeout)

    fill(consent=False)
    out["withoutConsent"] = driver.title
    driver.get(base + "/me")
    fill(consent=True)
    wait(driver, args.timeout, lambda d: d.find_elements(By.ID, "saved"))
    out["savedName"] = driver.find_element(By.ID, "name").get_attribute("value")
    shot("profile")
    if args.delete_profile:
        submit(driver, driver.find_element(By.ID, "delete-profile"), args.timeout)
        wait(driver, args.timeout, lambda d: not d.find_elements(By.ID, "delete-profile"))
        out["nameAfterDelete"] = driver.find_element(By.ID, "name").get_attribute("value")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--choose", help="the label of a menu button")
    parser.add_argument("--free", type=int, help="a free amount")
    parser.add_argument("--card", default="approve", choices=sorted(CARDS))
    parser.add_argument("--expect", required=True, help="comma-separated final states that end the wait")
    parser.add_argument("--double-click", action="store_true", help="press pay twice at once")
    parser.add_argument("--force", action="store_true", help="enable disabled buttons and press pay anyway")
    parser.add_argument("--shots", help="folder for screenshots")
    parser.add_argument("--name", default="pay")
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--profile", help="after paying: 'NAME,EMAIL' saved on My payments (first without consent, refused)")
    parser.add_argument("--delete-profile", action="store_true", help="then delete the profile again")
    args = parser.parse_args()
    expect = args.expect.split(",")
    out = {"name": args.name}
    driver = browser()

    def shot(what):
        if args.shots:
            driver.save_screenshot(f"{args.shots}/{args.name}-{what}.png")

    try:
        started = time.monotonic()
        driver.get(args.url)
        out["machinePageBytes"] = page_bytes(driver)
        out["availability"] = driver.find_element(By.ID, "availability").text
        shot("machine")
        if args.force:
            driver.execute_script("document.querySelectorAll('button,input').forEach(function(b){b.disabled=false;})")
        if args.free is not None:
            driver.find_element(By.ID, "free").send_keys(str(args.free))
            button = driver.find_element(By.CSS_SELECTOR, "button[value=free]")
        else:
            button = next(b for b in driver.find_elements(By.CSS_SELECTOR, "form.amounts button") if args.choose in b.text)
        if not button.is_enabled():
            out["state"] = "not-payable"
            print(json.dumps(out))
            return 0
        submit(driver, button, args.timeout, twice=args.double_click)
        wait(driver, args.timeout,
             lambda d: "/simulated-provider/" in d.current_url or "/p/" in d.current_url or d.find_elements(By.ID, "error"))
        if "/simulated-provider/checkout/" in driver.current_url:
            shot("checkout")
            submit(driver, driver.find_element(By.ID, "card-" + CARDS[args.card]), args.timeout)
        error = driver.find_elements(By.ID, "error")
        if error:
            out["state"] = "refused"
            out["title"] = driver.title
            out["text"] = error[0].text
            shot("refused")
            print(json.dumps(out))
            return 0
        wait(driver, args.timeout,
             lambda d: d.find_elements(By.ID, "state") and d.find_element(By.ID, "state").get_attribute("data-state") in expect)
        state = driver.find_element(By.ID, "state")
        out["state"] = state.get_attribute("data-state")
        out["text"] = state.text
        out["paymentId"] = driver.find_element(By.ID, "progress").get_attribute("data-payment")
        out["seconds"] = round(time.monotonic() - started, 3)
        out["paymentPageBytes"] = page_bytes(driver)
        shot("result")
        if args.profile:
            profile(driver, args, out, shot)
        print(json.dumps(out))
        return 0
    except Exception as error:  # the Swift test shows this with the page it was on
        out["state"] = "browser-error"
        out["error"] = f"{type(error).__name__}: {error}"
        try:
            out["url"] = driver.current_url
            out["page"] = driver.page_source[:2000]
            shot("error")
        except Exception:
            pass
        print(json.dumps(out))
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
