/// Big-endian encoders for writing wire bytes by hand in tests.
public enum BigEndianBytes {
    public static func u16(_ value: UInt16) -> [UInt8] {
        [UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)]
    }

    public static func u32(_ value: UInt32) -> [UInt8] {
        [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: value >> $0) }
    }

    public static func u64(_ value: UInt64) -> [UInt8] {
        [56, 48, 40, 32, 24, 16, 8, 0].map { UInt8(truncatingIfNeeded: value >> $0) }
    }

    public static func text(_ string: String) -> [UInt8] { Array(string.utf8) }
}
