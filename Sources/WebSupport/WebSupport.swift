import Foundation
import HTTPTypes
import Hummingbird

/// What both web servers (the payment pages, the operator console) need the same way.
public enum HTML {
    /// Text safe inside an element or a quoted attribute.
    public static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for c in text.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(c)
            }
        }
        return out
    }
}

/// An `application/x-www-form-urlencoded` body.
public enum URLEncodedForm {
    /// The fields, each named once; nil when a pair does not decode, a name repeats, or there
    /// are more than `maxFields` (a form nobody's page sends).
    public static func parse(_ text: String, maxFields: Int) -> [String: String]? {
        var fields: [String: String] = [:]
        for pair in text.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = parts[0].replacingOccurrences(of: "+", with: " ").removingPercentEncoding,
                let value = (parts.count > 1 ? String(parts[1]) : "").replacingOccurrences(of: "+", with: " ").removingPercentEncoding,
                fields[name] == nil, fields.count < maxFields
            else { return nil }
            fields[name] = value
        }
        return fields
    }
}

/// No framing, no sniffing, scripts and forms only from the site itself; with `noStore`, no
/// caching unless a route says otherwise.
public struct SecurityHeaders<Context: RequestContext>: RouterMiddleware {
    let contentSecurityPolicy: String
    let noStore: Bool

    public init(contentSecurityPolicy: String, noStore: Bool) {
        self.contentSecurityPolicy = contentSecurityPolicy
        self.noStore = noStore
    }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        response.headers[.contentSecurityPolicy] = contentSecurityPolicy
        response.headers[HTTPField.Name("X-Content-Type-Options")!] = "nosniff"
        // same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on forms.
        response.headers[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        if noStore, response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        return response
    }
}
