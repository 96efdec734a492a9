import NBDProtocol

/// Small text helpers for the HTTP layer.
enum NBDQuery {
    /// Percent-decodes a query name or value; malformed escapes are left as they are (the
    /// value then fails its own validation).
    static func decode(_ text: String) -> String {
        NBDURI.percentDecode(Substring(text)) ?? text
    }

    /// 1-128 characters of `[A-Za-z0-9._:-]`.
    static func isValidRequestID(_ text: String) -> Bool {
        (1...128).contains(text.utf8.count) && text.utf8.allSatisfy { byte in
            (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                || byte == 46 || byte == 95 || byte == 58 || byte == 45
        }
    }
}
