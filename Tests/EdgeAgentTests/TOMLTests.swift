import DaemonSupport
import Testing

/// The TOML the daemons' config files are written in: the nested form (the payment server's
/// document) and what is refused, each with its line.
@Suite struct TOMLTests {
    @Test func aNestedDocument() throws {
        let table = try TOMLDocument.parse(
            """
            # top
            public-url = "https://pay.example.com"   # a comment
            "quoted key" = 'C:\\path'
            site.name = "Corner"
            site.code = -12

            [listen]
            host = "127.0.0.1"
            port = 8_081

            [[machines]]
            machine-id = "laundry-01"
            menu = [
              { label = "Wash", amount = 400 },  # a comment inside
              { label = "Dry \\u00e9\\t", amount = +100 },
            ]
            free-amount = { step = 100, max = 3000 }

            [[machines]]
            machine-id = "wash-01"
            menu = []
            tags = [true, false]

            [machines.extra]
            on = true
            """, path: "p.toml")
        #expect(table["public-url"] == .string("https://pay.example.com"))
        #expect(table["quoted key"] == .string("C:\\path"))
        #expect(table["site"] == .table(TOMLTable(entries: [
            TOMLEntry(key: "name", value: .string("Corner"), line: 4), TOMLEntry(key: "code", value: .integer(-12), line: 5),
        ])))
        #expect(table["listen"] == .table(TOMLTable(entries: [
            TOMLEntry(key: "host", value: .string("127.0.0.1"), line: 8), TOMLEntry(key: "port", value: .integer(8081), line: 9),
        ])))
        guard case .array(let machines)? = table["machines"], machines.count == 2,
            case .table(let first) = machines[0], case .table(let second) = machines[1]
        else {
            Issue.record("machines: \(String(describing: table["machines"]))")
            return
        }
        #expect(first["menu"] == .array([
            .table(TOMLTable(entries: [TOMLEntry(key: "label", value: .string("Wash"), line: 14), TOMLEntry(key: "amount", value: .integer(400), line: 14)])),
            .table(TOMLTable(entries: [TOMLEntry(key: "label", value: .string("Dry é\t"), line: 15), TOMLEntry(key: "amount", value: .integer(100), line: 15)])),
        ]))
        #expect(first["free-amount"] == .table(TOMLTable(entries: [
            TOMLEntry(key: "step", value: .integer(100), line: 17), TOMLEntry(key: "max", value: .integer(3000), line: 17),
        ])))
        #expect(second["menu"] == .array([]))
        #expect(second["tags"] == .array([.boolean(true), .boolean(false)]))
        #expect(second["extra"] == .table(TOMLTable(entries: [TOMLEntry(key: "on", value: .boolean(true), line: 25)])), "[machines.extra] is the last machine's")
        #expect(first["extra"] == nil)
    }

    @Test(arguments: [
        ("[a]\nx = 1\n[a]\ny = 2", "line 3: the table [a] is defined again (first on line 1)"),
        ("a.b = 1\n[a]", "line 2: the table [a] is defined again (first on line 1)"),
        ("a = 1\n[a.b]", "line 2: 'a' is already a value (line 1), not a table"),
        ("t = { x = 1 }\nt.y = 2", "line 2: 't' is already set (line 1)"),
        ("[[m]]\n[m]", "line 2: [m] names an array of tables (line 1); write [[m]] to add one"),
        ("[m]\n[[m]]", "line 2: [[m]] names a table, not an array of tables (line 1)"),
        ("x = [1,\n 2,\n", "line 3: the array opened on line 1 is not closed with ]"),
        ("x = [1 2]", "line 1: expected , or ] in the array opened on line 1"),
        ("x = { a = 1\n}", "line 1: expected , or } in the inline table (it is one line)"),
        ("x = 1.5", "'1.5' is not a whole number"),
        ("x = 2026-12-01", "'2026-12-01' is not a value"),
        ("[a\nx = 1", "line 1: the table header is not closed with ]"),
        ("[[a]\nx = 1", "line 1: the table header is not closed with ]]"),
        ("[a] x = 1", "line 1: unexpected 'x = 1' after the table header"),
        ("a b = 1", "'a b' is not a key"),
        ("x = \"\\uZZ\"", "\\uZZ is not a Unicode character"),
        ("x = \"\"\"\nmulti\n\"\"\"", "multi-line strings are not supported"),
        ("x = ", "the value is missing"),
        ("a.b = 1\na.b = 2", "line 2: 'a.b' is set again (first on line 1)"),
    ])
    func problemsNameTheirLine(text: String, mentions: String) {
        #expect {
            try TOMLDocument.parse(text, path: "/etc/p.toml")
        } throws: { error in
            "\(error)".contains(mentions) && "\(error)".hasPrefix("/etc/p.toml line ")
        }
    }

    @Test func windowsLineEnds() throws {
        let table = try TOMLDocument.parse("a = 1\r\n[t]\r\nb = \"x\"\r\n", path: "w.toml")
        #expect(table["a"] == .integer(1))
        #expect(table["t"] == .table(TOMLTable(entries: [TOMLEntry(key: "b", value: .string("x"), line: 3)])))
    }

    @Test func keysBetweenKebabAndCamelCase() {
        #expect(TOMLDocument.camelCase("payment-ttl-s") == "paymentTtlS")
        #expect(TOMLDocument.camelCase("payments_per_user_per_minute") == "paymentsPerUserPerMinute")
        #expect(TOMLDocument.camelCase("currency") == "currency")
        #expect(TOMLDocument.camelCase("publicUrl") == "publicUrl")
        #expect(TOMLDocument.kebabCase("paymentTtlS") == "payment-ttl-s")
        #expect(TOMLDocument.kebabCase("webhookSecretFile") == "webhook-secret-file")
    }
}

/// One HOST:PORT parser for every daemon option (`serve --http`, `--firmware-listen`,
/// `payment-server --listen`).
@Suite struct ListenAddressTests {
    @Test func hostsPortsAndIPv6InBrackets() {
        #expect(ListenAddress("127.0.0.1:8090") == ListenAddress(host: "127.0.0.1", port: 8090))
        #expect(ListenAddress("[::1]:8090") == ListenAddress(host: "::1", port: 8090))
        #expect(ListenAddress(":8090") == ListenAddress(host: "0.0.0.0", port: 8090))
        #expect(ListenAddress("localhost:0")?.port == 0)
        #expect(ListenAddress("[::1]:8090")?.description == "[::1]:8090")
        for bad in ["8090", "host:", "host:65536", "host:-1", "::1:8090", "[::1:8090", "[]:80", "a:b"] {
            #expect(ListenAddress(bad) == nil, "\(bad)")
        }
    }
}
