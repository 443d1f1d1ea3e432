import Foundation
import WebSupport

/// Server-rendered pages: mobile first, no external resources, a few KB each.
enum Pages {
    static func escape(_ text: String) -> String { HTML.escape(text) }

    static let style = """
        body{font:17px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#17202a}
        main{max-width:30rem;margin:0 auto;padding:1rem}
        h1{font-size:1.45rem;margin:.2rem 0}
        .place{color:#5d6d7e;margin:0 0 1rem}
        .card{background:#fff;border-radius:12px;padding:1rem;margin:0 0 1rem;box-shadow:0 1px 3px #0002}
        .badge{display:inline-block;border-radius:99px;padding:.15rem .7rem;font-weight:600;font-size:.9rem}
        .ready{background:#d5f5e3;color:#145a32}.busy,.notReady,.unknown,.sent,.authorized,.checkout{background:#fdebd0;color:#7e5109}
        .offline,.declined,.failed,.voided,.refunded{background:#fadbd8;color:#78281f}.captured{background:#d5f5e3;color:#145a32}
        .held{background:#fadbd8;color:#78281f}
        button,.button{display:block;width:100%;box-sizing:border-box;font:inherit;font-weight:600;padding:.9rem;margin:.5rem 0;
          border:0;border-radius:10px;background:#1f6feb;color:#fff;text-align:center;text-decoration:none}
        button.secondary{background:#e5e8e8;color:#17202a}
        button:disabled{background:#aab7b8}
        label{display:block;margin:.6rem 0 .2rem}
        input[type=number],input[type=text],input[type=email],input[type=tel]{width:100%;box-sizing:border-box;font:inherit;padding:.6rem;border:1px solid #aab7b8;border-radius:8px}
        .amounts button{display:flex;justify-content:space-between}
        .state{font-size:1.2rem;font-weight:600}
        .small{font-size:.85rem;color:#5d6d7e}
        table{width:100%;border-collapse:collapse}td{padding:.35rem 0;border-bottom:1px solid #eee;overflow-wrap:anywhere}
        td:first-child{padding-right:.8rem;color:#5d6d7e;white-space:nowrap}
        footer{text-align:center;margin:1rem 0}a{color:#1f6feb}
        """

    static func layout(title: String, body: String, script: Bool = false) -> String {
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width,initial-scale=1">
        <title>\(escape(title))</title>
        <style>\(style)</style>\(script ? "\n<script src=\"/static/pay.js\" defer></script>" : "")
        </head><body><main>
        \(body)
        <footer class="small"><a href="/me">My payments</a> · PulseBridge</footer>
        </main></body></html>
        """
    }

    static func availabilityText(_ availability: Availability) -> String {
        switch availability {
        case .ready: "Ready"
        case .busy: "Busy: crediting another payment"
        case .notReady: "May be out of order"
        case .offline: "Offline"
        }
    }

    static func machine(
        _ machine: ServerConfiguration.Machine, availability: Availability, currency: String, csrf: String, key: String
    ) -> String {
        let canPay = availability == .ready || availability == .notReady
        var amounts = ""
        for item in machine.menu {
            amounts += """
                <button type="submit" name="amount" value="\(item.amount)"\(canPay ? "" : " disabled")><span>\(escape(item.label))</span><span>\(formatAmount(item.amount)) \(escape(currency))</span></button>

                """
        }
        var free = ""
        if let step = machine.freeAmount {
            free = """
                <label for="free">Another amount (\(formatAmount(step.step)) to \(formatAmount(step.max)), in steps of \(formatAmount(step.step)))</label>
                <input id="free" name="free" type="number" inputmode="numeric" min="\(step.step)" max="\(step.max)" step="\(step.step)"\(canPay ? "" : " disabled")>
                <button type="submit" name="amount" value="free" class="secondary"\(canPay ? "" : " disabled")>Pay this amount</button>
                """
        }
        let notice =
            availability == .notReady
            ? "<p>Its last payment was refused because the machine was not ready (out of order, or a door open). If it is still not ready, your payment is cancelled and you are not charged.</p>"
            : canPay
            ? "<p class=\"small\">You pay on the next page. The machine is credited as if you had put coins in.</p>"
            : "<p>\(availability == .offline ? "This machine is not connected right now, so it cannot be paid." : "This machine cannot take a payment at the moment.") You will not be charged. Try again later or ask the staff.</p>"
        return layout(
            title: "Pay \(machine.name)",
            body: """
                <h1>\(escape(machine.name))</h1>
                <p class="place">\(escape(machine.place))</p>
                <div class="card"><span id="availability" class="badge \(availability.rawValue)">\(availabilityText(availability))</span>
                \(notice)</div>
                <form class="card amounts" method="post" action="/m/\(escape(machine.machineId))/pay">
                <input type="hidden" name="csrf" value="\(csrf)">
                <input type="hidden" name="key" value="\(key)">
                \(amounts)\(free)
                </form>
                """)
    }

    /// The state's short name on its badge.
    static func badge(_ state: PaymentState) -> String {
        switch state {
        case .checkout: "Paying"
        case .authorized, .sent: "Crediting"
        case .captured: "Credited"
        case .voided: "Cancelled"
        case .declined: "Declined"
        case .failed: "Not charged"
        case .held: "On hold"
        case .unknown: "Waiting"
        case .refunded: "Refunded"
        }
    }

    static func stateText(_ payment: PaymentRecord) -> String {
        switch payment.state {
        case .checkout: return "Waiting for your payment to be approved…"
        case .authorized: return "Payment approved. Sending it to the machine…"
        case .sent: return "Sent to the machine. Crediting…"
        case .captured:
            return "Credited\(payment.pulses.map { ": \($0) pulse\($0 == 1 ? "" : "s")" } ?? ""). Start your machine!"
        case .voided:
            return "The machine could not be credited (\(reasonText(payment.resultReason ?? payment.note))). Your payment was cancelled: you have not been charged."
        case .declined: return "Your payment was declined. You have not been charged."
        case .failed: return "The payment provider did not answer. You have not been charged; please try again."
        case .held:
            return "Something went wrong while crediting the machine. Your payment is on hold and the operator has been told: you will only be charged for what the machine received."
        case .unknown:
            return "We have not heard back from the machine yet. You will only be charged if it was credited."
        case .refunded: return "This payment was refunded."
        }
    }

    static func reasonText(_ reason: String?) -> String {
        switch reason {
        case "machine_inhibited": "it is not ready"
        case "expired": "it took too long"
        case "busy": "it was busy"
        case "amount_exceeds_max", "amount_not_representable", "currency_mismatch": "it does not accept that amount"
        case let other?: other.replacingOccurrences(of: "_", with: " ")
        case nil: "it was not reached"
        }
    }

    static func payment(_ payment: PaymentRecord, machineName: String) -> String {
        layout(
            title: "Payment \(formatAmount(payment.amount)) \(payment.currency)",
            body: """
                <h1>\(escape(machineName))</h1>
                <p class="place">\(formatAmount(payment.amount)) \(escape(payment.currency))</p>
                <div class="card" id="progress" data-payment="\(escape(payment.paymentId))" data-final="\(payment.state.isFinal)">
                <span id="badge" class="badge \(payment.state.rawValue)">\(badge(payment.state))</span>
                <p id="state" class="state" data-state="\(payment.state.rawValue)" aria-live="polite">\(escape(stateText(payment)))</p>
                <noscript><p class="small">Reload this page to see progress.</p></noscript>
                </div>
                \(receipt(payment, machineName: machineName))
                <a class="button" href="/m/\(escape(payment.machineId))">Back to the machine</a>
                """,
            script: !payment.state.isFinal)
    }

    static func receipt(_ payment: PaymentRecord, machineName: String) -> String {
        let date = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(payment.createdAt) / 1000))
        return """
            <div class="card"><table>
            <tr><td>Receipt</td><td>\(escape(payment.paymentId))</td></tr>
            <tr><td>Machine</td><td>\(escape(machineName)) (\(escape(payment.machineId)))</td></tr>
            <tr><td>Amount</td><td>\(formatAmount(payment.amount)) \(escape(payment.currency))</td></tr>
            <tr><td>Date</td><td>\(date)</td></tr>
            </table></div>
            """
    }

    static func me(
        userId: String, customer: CustomerRecord?, payments: [PaymentRecord], machineNames: [String: String], csrf: String, saved: Bool
    ) -> String {
        var rows = ""
        for p in payments {
            rows += """
                <tr><td><a href="/p/\(escape(p.paymentId))">\(escape(machineNames[p.machineId] ?? p.machineId))</a></td><td>\(formatAmount(p.amount)) \(escape(p.currency))</td><td><span class="badge \(p.state.rawValue)">\(badge(p.state))</span></td></tr>

                """
        }
        let profile = customer?.consentAt != nil
        return layout(
            title: "My payments",
            body: """
                <h1>My payments</h1>
                <p class="small">Your customer ID: <code id="user-id">\(escape(userId))</code></p>
                <div class="card">\(payments.isEmpty ? "<p>No payments yet.</p>" : "<table id=\"payments\">\(rows)</table>")</div>
                <form class="card" method="post" action="/me/profile">
                <h2>Profile (optional)</h2>
                <p class="small">Only if you agree: the operator keeps your name and contact to send receipts and help with problems. Delete it here at any time.</p>
                \(saved ? "<p id=\"saved\">Saved.</p>" : "")
                <input type="hidden" name="csrf" value="\(csrf)">
                <label for="name">Name</label><input id="name" name="name" type="text" maxlength="100" value="\(escape(customer?.name ?? ""))">
                <label for="email">E-mail</label><input id="email" name="email" type="email" maxlength="200" value="\(escape(customer?.email ?? ""))">
                <label for="phone">Phone</label><input id="phone" name="phone" type="tel" maxlength="40" value="\(escape(customer?.phone ?? ""))">
                <label><input type="checkbox" name="consent" value="yes"\(profile ? " checked" : "")> I agree that the operator keeps this profile</label>
                <button type="submit">Save profile</button>
                </form>
                \(profile ? """
                <form class="card" method="post" action="/me/delete"><input type="hidden" name="csrf" value="\(csrf)">
                <button type="submit" class="secondary" id="delete-profile">Delete my profile</button></form>
                """ : "")
                """)
    }

    static func error(title: String, message: String, link: (href: String, label: String)? = nil) -> String {
        layout(
            title: title,
            body: """
                <h1>\(escape(title))</h1>
                <div class="card"><p id="error">\(escape(message))</p></div>
                \(link.map { "<a class=\"button\" href=\"\(escape($0.href))\">\(escape($0.label))</a>" } ?? "")
                """)
    }

    static func simulatedCheckout(ref: String, amount: Int, currency: String, returnURL: String, csrf: String) -> String {
        var cards = ""
        for card in SimulatedProvider.TestCard.allCases {
            cards += "<button type=\"submit\" name=\"card\" value=\"\(card.rawValue)\" id=\"card-\(card.rawValue)\"\(card == .approve ? "" : " class=\"secondary\"")>\(escape(card.label)) · \(card.rawValue)</button>\n"
        }
        return layout(
            title: "Simulated checkout",
            body: """
                <h1>Simulated payment provider</h1>
                <p class="place">A test checkout: no real card, no real money.</p>
                <div class="card"><p>Pay <strong>\(formatAmount(amount)) \(escape(currency))</strong> with a test card:</p>
                <form method="post" action="/simulated-provider/checkout/\(escape(ref))">
                <input type="hidden" name="csrf" value="\(csrf)">
                <input type="hidden" name="return" value="\(escape(returnURL))">
                \(cards)</form></div>
                """)
    }

    /// Live progress on a payment's page: an EventSource on `/p/{id}/events`.
    static let script = """
        (function(){var el=document.getElementById('progress');if(!el||el.dataset.final==='true'||!window.EventSource)return;
        var es=new EventSource('/p/'+el.dataset.payment+'/events');
        es.onmessage=function(e){var d=JSON.parse(e.data);var s=document.getElementById('state');var b=document.getElementById('badge');
        s.textContent=d.text;s.dataset.state=d.state;b.textContent=d.badge;b.className='badge '+d.state;
        if(d.final){el.dataset.final='true';es.close();}};
        es.onerror=function(){if(el.dataset.final==='true')es.close();};})();
        """
}
