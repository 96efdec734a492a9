import NBDProtocol

/// What an extent's flags mean in each metadata context, for `/extents`.
enum ExtentKinds {
    static func isDirtyBitmap(_ context: String) -> Bool { context.hasPrefix("qemu:dirty-bitmap:") }
    static let allocationDepth = "qemu:allocation-depth"

    /// One extent, its flags named: `hole`/`zero` (base:allocation), `dirty` (a dirty bitmap),
    /// `depth` (allocation depth: 0 unallocated, 1 this image, n the n-th backing file), or the
    /// raw `flags` of any other context.
    static func extentJSON(_ extent: NBDExtent, context: String) -> JSON.Value {
        var fields: [(String, JSON.Value)] = [("offset", .int(extent.offset)), ("length", .int(extent.length))]
        if context == NBDMetaContext.baseAllocation {
            fields += [("hole", .bool(extent.isHole)), ("zero", .bool(extent.isZero))]
        } else if isDirtyBitmap(context) {
            fields.append(("dirty", .bool(extent.flags & 1 != 0)))
        } else if context == allocationDepth {
            fields.append(("depth", .int(UInt64(extent.flags))))
        } else {
            fields.append(("flags", .int(UInt64(extent.flags))))
        }
        return .object(fields)
    }

    /// The kind an extent counts as in a summary (as `nbdinfo --map --totals` describes them).
    static func kind(_ flags: UInt32, context: String) -> String {
        if context == NBDMetaContext.baseAllocation {
            switch flags & 3 {
            case 0: return "data"
            case 1: return "hole"
            case 2: return "zero"
            default: return "hole,zero"
            }
        }
        if isDirtyBitmap(context) { return flags & 1 != 0 ? "dirty" : "clean" }
        if context == allocationDepth {
            switch flags {
            case 0: return "unallocated"
            case 1: return "local"
            default: return "backing depth \(flags)"
            }
        }
        return "flags \(flags)"
    }

    /// Bytes per kind, in the order each kind first appears.
    static func summaryJSON(_ extents: [NBDExtent], context: String, offset: UInt64, length: UInt64) -> JSON.Value {
        var order: [UInt32] = []
        var totals: [UInt32: UInt64] = [:]
        for extent in extents {
            if totals[extent.flags] == nil { order.append(extent.flags) }
            totals[extent.flags, default: 0] += extent.length
        }
        return .object([
            ("context", .string(context)),
            ("offset", .int(offset)),
            ("length", .int(length)),
            ("totals", .array(order.map { flags in
                .object([("kind", .string(kind(flags, context: context))), ("flags", .int(UInt64(flags))), ("length", .int(totals[flags] ?? 0))])
            })),
        ])
    }
}
