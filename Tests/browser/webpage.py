"""What the browser scripts share: Debian's headless Chromium, and waits that survive a page being
swapped for the next one.

Selenium's click() returns before the answer to a form is loaded. Reading the page meanwhile meets
the document being left: chromedriver then says the element is stale or, in a narrow window, fails
with "unknown error: Node with given id does not belong to the document" (seen on the loaded CI
machine). So a submit marks the document it leaves and waits for a complete document without the
mark, and a wait retries a read that failed while documents were swapping.
"""
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait


def chromium(*flags, mobile=None):
    """Debian's Chromium and chromedriver (nothing is downloaded), headless."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                 "--disable-extensions", "--disable-background-networking") + flags:
        options.add_argument(flag)
    if mobile:
        options.add_experimental_option("mobileEmulation", mobile)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(driver, timeout, condition, poll=0.25):
    """Until condition(driver) is true; a read that fails while a page is being swapped is tried
    again. On timeout, TimeoutException (carrying the last failure)."""
    return WebDriverWait(driver, timeout, poll_frequency=poll,
                         ignored_exceptions=(WebDriverException,)).until(condition)


def submit(driver, element, timeout=30, twice=False):
    """Click a button that loads another page (a form's answer, a redirect) and wait until that
    page is the document and has loaded. twice: two clicks at once (a customer's double tap)."""
    driver.execute_script("document.documentElement.setAttribute('data-being-left', '')")
    if twice:
        driver.execute_script("arguments[0].click(); arguments[0].click();", element)
    else:
        element.click()
    wait(driver, timeout, lambda d: d.execute_script(
        "return document.readyState === 'complete' && !document.documentElement.hasAttribute('data-being-left')"))
