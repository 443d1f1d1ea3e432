import FleetManager
import Testing

/// CSV as spreadsheets write it: RFC 4180 quoting, `,` or `;`.
@Suite struct CSVRowsTests {
    @Test func quotedFieldsAndBothDelimiters() throws {
        let comma = try CSVRows.parse("machineId,profile\r\n\"wash-01\",\"profiles/a, b.json\"\n# a comment\n\nvend-01 , \"say \"\"hi\"\"\"\n")
        #expect(comma.map(\.fields) == [["machineId", "profile"], ["wash-01", "profiles/a, b.json"], ["vend-01", "say \"hi\""]])
        #expect(comma.map(\.line) == [1, 2, 5])
        let semicolon = try CSVRows.parse("\u{FEFF}machineId;profile\n\"wash-01\";\"a;b.json\"\nvend-01;\n")
        #expect(semicolon.map(\.fields) == [["machineId", "profile"], ["wash-01", "a;b.json"], ["vend-01", ""]])
        let multiline = try CSVRows.parse("a,\"line one\nline two\"\nb,c")
        #expect(multiline.map(\.fields) == [["a", "line one\nline two"], ["b", "c"]])
        #expect(multiline.map(\.line) == [1, 3])
    }

    @Test func brokenQuotingIsAnErrorWithItsLine() {
        #expect(throws: CSVRows.Malformed.self) { try CSVRows.parse("a,b\nc,\"open\n") }
        #expect(throws: CSVRows.Malformed.self) { try CSVRows.parse("a,b\"c\"\n") }
        #expect(throws: CSVRows.Malformed.self) { try CSVRows.parse("a,\"b\"c\n") }
        do {
            _ = try CSVRows.parse("ok,1\nbad,\"x\"y\n")
        } catch {
            #expect(error.line == 2)
        }
    }
}
