/// A minimal JSON writer: the gateway's bodies are small, flat and known in shape, and this
/// keeps Foundation out of the request path.
public enum JSON {
    /// A JSON value.
    public indirect enum Value: Sendable, Equatable {
        case string(String)
        case int(UInt64)
        case signed(Int64)
        case bool(Bool)
        case null
        case array([Value])
        case object([(String, Value)])

        public static func == (lhs: Value, rhs: Value) -> Bool { lhs.rendered == rhs.rendered }

        /// The compact JSON text.
        public var rendered: String {
            var out = ""
            write(to: &out)
            return out
        }

        private func write(to out: inout String) {
            switch self {
            case .string(let text): JSON.quote(text, into: &out)
            case .int(let number): out += String(number)
            case .signed(let number): out += String(number)
            case .bool(let flag): out += flag ? "true" : "false"
            case .null: out += "null"
            case .array(let items):
                out += "["
                for (index, item) in items.enumerated() {
                    if index > 0 { out += "," }
                    item.write(to: &out)
                }
                out += "]"
            case .object(let fields):
                out += "{"
                for (index, (key, value)) in fields.enumerated() {
                    if index > 0 { out += "," }
                    JSON.quote(key, into: &out)
                    out += ":"
                    value.write(to: &out)
                }
                out += "}"
            }
        }
    }

    static func quote(_ text: String, into out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
