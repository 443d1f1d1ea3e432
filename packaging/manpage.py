#!/usr/bin/env python3
"""A man page from a Swift ArgumentParser command's own description of itself.

    packaging/manpage.py BINARY VERSION > BINARY.1

Runs `BINARY --experimental-dump-help` (the argument parser's JSON: every subcommand, option,
default and help text, the same data `--help` prints) and writes roff (man(7)). Generated at
package time from the binary that is packaged, so the page cannot drift from the code.
"""
import datetime
import json
import os
import pwd
import subprocess
import sys

SEE_ALSO = {
    "edge-agent": ["fleet-manager(1)", "payment-server(1)"],
    "fleet-manager": ["edge-agent(1)", "payment-server(1)", "mosquitto(8)"],
    "payment-server": ["fleet-manager(1)"],
}

DESCRIPTION = {
    "edge-agent": "The edge agent runs on the small Linux unit inside a coin laundry, car wash or "
    "vending machine. It verifies signed payment completions that arrive over MQTT and fires relay "
    "contacts on the machine's fee input with exactly the pulses its coin mechanism would give, "
    "then reports the result so the payment server captures or voids the charge.",
    "fleet-manager": "The fleet manager provisions units, watches them, pushes configuration, keys "
    "and firmware, and keeps every transaction with its user ID in its registry (the fleet home).",
    "payment-server": "The payment server answers the payment code a machine shows: the customer's "
    "payment page, checkout through a payment provider, the signed completion to the machine, "
    "receipts and the customer information the operator collects.",
}


def esc(text):
    """Roff-escapes running text: backslashes, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def option_synopsis(arg):
    names = arg.get("names", [])
    if arg["kind"] == "positional":
        label = "<" + arg.get("valueName", "value") + ">"
        return label + ("..." if arg.get("isRepeating") else "")
    shown = []
    for n in names:
        shown.append(("--" if n["kind"] == "long" else "-") + n["name"])
    label = ", ".join(shown)
    if arg["kind"] == "option":
        label += " <" + arg.get("valueName", "value") + ">"
    return label


def render_arguments(args, out):
    visible = [a for a in args if a.get("shouldDisplay", True)]
    if not visible:
        return
    for arg in visible:
        out.append(".TP")
        out.append("\\fB" + esc(option_synopsis(arg)) + "\\fR")
        text = arg.get("abstract", "")
        if arg.get("discussion"):
            text += "\n" + arg["discussion"]
        if "defaultValue" in arg:
            text += " (default: " + arg["defaultValue"] + ")"
        out.append(esc(text.strip()) or ".")


def render_command(cmd, path, out, top):
    name = " ".join(path)
    if not top:
        out.append(".SS " + esc(name))
        if cmd.get("abstract"):
            out.append(esc(cmd["abstract"]))
        if cmd.get("discussion"):
            out.append(".PP")
            out.append(esc(cmd["discussion"]))
    args = cmd.get("arguments", [])
    if args and not top:
        render_arguments(args, out)
    for sub in cmd.get("subcommands", []):
        if sub["commandName"] == "help" or not sub.get("shouldDisplay", True):
            continue
        render_command(sub, path + [sub["commandName"]], out, False)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: manpage.py BINARY VERSION")
    binary, version = sys.argv[1], sys.argv[2]
    env = dict(os.environ)
    env.pop("PULSEBRIDGE_HOME", None)
    dumped = subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True, env=env)
    # Defaults computed from the environment (the fleet home is ~/.pulsebridge) are shown as
    # a reader's, not as the build machine's.
    builder_home = pwd.getpwuid(os.getuid()).pw_dir
    dumped_text = json.dumps(json.loads(dumped.stdout)).replace(builder_home + "/", "~/")
    info = json.loads(dumped_text)["command"]
    name = os.path.basename(binary)
    date = datetime.datetime.fromtimestamp(
        int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or datetime.datetime.now().timestamp(), datetime.timezone.utc
    ).strftime("%Y-%m-%d")
    out = []
    out.append('.TH "%s" 1 "%s" "PulseBridge %s" "PulseBridge Manual"' % (name.upper(), date, version))
    out.append(".SH NAME")
    out.append(esc(name) + " \\- " + esc(info.get("abstract", "PulseBridge")))
    out.append(".SH SYNOPSIS")
    subs = [s for s in info.get("subcommands", []) if s["commandName"] != "help" and s.get("shouldDisplay", True)]
    if subs:
        out.append(".B " + esc(name))
        out.append("\\fIsubcommand\\fR [\\fIoptions\\fR]")
    else:
        out.append(".B " + esc(name))
        out.append("[\\fIoptions\\fR]")
    out.append(".SH DESCRIPTION")
    out.append(esc(DESCRIPTION.get(name, info.get("abstract", ""))))
    if info.get("discussion"):
        out.append(".PP")
        out.append(esc(info["discussion"]))
    top_args = info.get("arguments", [])
    if top_args:
        out.append(".SH OPTIONS")
        render_arguments(top_args, out)
    if subs:
        out.append(".SH SUBCOMMANDS")
        render_command(info, [name], out, True)
    out.append(".SH FILES")
    out.append("The documentation of the installed package: /usr/share/doc/pulsebridge\\-" + esc(name) + "/")
    out.append(".SH SEE ALSO")
    out.append(", ".join("\\fB" + esc(s.split("(")[0]) + "\\fR(" + s.split("(")[1] for s in SEE_ALSO.get(name, [])))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
