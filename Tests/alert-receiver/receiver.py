#!/usr/bin/env python3
"""A test receiver for serve's alert webhooks: records every POST (headers and body) as a JSON
line and answers as the test asks.

    receiver.py PORT RECORD_FILE

Answers 500 to the first attempt of every delivery (so each is retried once) and to every
attempt for a machine whose ID starts with "dead-" (so it is retried until dead); 200
otherwise. Writes "ready" to standard output once it listens.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, record = int(sys.argv[1]), sys.argv[2]
seen = set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        delivery = self.headers.get("PulseBridge-Delivery", "")
        try:
            machine = json.loads(body)["alert"]["machineId"]
        except Exception:
            machine = ""
        first = delivery not in seen
        seen.add(delivery)
        status = 500 if first or machine.startswith("dead-") else 200
        with open(record, "a") as f:
            f.write(json.dumps({
                "status": status,
                "event": self.headers.get("PulseBridge-Event"),
                "delivery": delivery,
                "signature": self.headers.get("PulseBridge-Signature"),
                "contentType": self.headers.get("Content-Type"),
                "body": body.decode(),
            }) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
