import Testing
@testable import PaymentServer

@Suite struct FormTests {
    @Test func aFormIsReadStrictly() throws {
        let form = try Form.parse("amount=400&key=abc%20def&name=J+Doe")
        #expect(form["amount"] == "400")
        #expect(form["key"] == "abc def")
        #expect(form["name"] == "J Doe")
        #expect(throws: CustomerRefusal.self) { try Form.parse("a=1&a=2") }
        #expect(throws: CustomerRefusal.self) { try Form.parse("a=%ZZ") }
    }
}
