/// Amounts travel in the currency's minor unit (PROTOCOL.md: yen, cents). For people they are
/// shown in the major unit with the currency's ISO 4217 number of decimals.
public enum Money {
    /// ISO 4217 currencies whose minor unit is not a hundredth. Any other code: 2 decimals.
    static let decimals: [String: Int] = [
        "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0,
        "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
        "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
        "CLF": 4, "UYW": 4,
    ]

    /// How many decimals `currency` has.
    public static func decimals(of currency: String) -> Int { decimals[currency] ?? 2 }

    /// `1234567, "JPY"` → `1,234,567 JPY`; `123456, "EUR"` → `1,234.56 EUR`; an empty currency
    /// (a unit's own claim, no signed completion) shows the bare minor units.
    public static func format(_ minorUnits: Int, currency: String) -> String {
        let places = currency.isEmpty ? 0 : decimals(of: currency)
        let magnitude = minorUnits.magnitude
        var scale: UInt = 1
        for _ in 0..<places { scale *= 10 }
        let whole = String(magnitude / scale)
        var grouped = ""
        for (i, c) in whole.enumerated() {
            if i > 0 && (whole.count - i) % 3 == 0 { grouped.append(",") }
            grouped.append(c)
        }
        if places > 0 {
            let fraction = String(magnitude % scale)
            grouped += "." + String(repeating: "0", count: places - fraction.count) + fraction
        }
        return (minorUnits < 0 ? "-" : "") + grouped + (currency.isEmpty ? "" : " " + currency)
    }
}
