import NIOCore

extension NBDHandshakeStateMachine {
    /// Facts collected during the handshake, and the parsing of the replies that carry them.
    /// A thrown error is a protocol violation.
    struct Progress: Sendable {
        var noZeroes = false
        var structuredReplies = false
        var metaContexts: [String: UInt32] = [:]
        /// Contexts the export offers (from LIST_META_CONTEXT, when asked).
        var availableMetaContexts: [String] = []
        /// Contexts SET_META_CONTEXT asked for.
        var requestedMetaContexts: [String] = []
        var exports: [NBDExportListing] = []
        var size: UInt64?
        var flags = NBDTransmissionFlags()
        var blockSize: NBDBlockSize?
        var canonicalName: String?
        var exportDescription = ""

        /// An `NBD_REP_META_CONTEXT` reply to SET_META_CONTEXT: the id of one context asked for.
        mutating func recordMetaContext(_ payload: inout ByteBuffer, asked: [String]) throws(NBDError) {
            guard let id = payload.readInteger(as: UInt32.self),
                  let name = payload.readString(length: payload.readableBytes)
            else { throw .violation("short NBD_REP_META_CONTEXT reply") }
            guard asked.contains(name) else {
                throw .violation("server selected metadata context \"\(name)\" that was not asked for")
            }
            metaContexts[name] = id
        }

        /// An `NBD_REP_META_CONTEXT` reply to LIST_META_CONTEXT: one context the export offers.
        mutating func recordAvailableMetaContext(_ payload: inout ByteBuffer) throws(NBDError) {
            guard payload.readInteger(as: UInt32.self) != nil,
                  let bytes = payload.readBytes(length: payload.readableBytes),
                  let name = String(validating: bytes, as: UTF8.self), !name.isEmpty
            else { throw .violation("malformed NBD_REP_META_CONTEXT reply to LIST_META_CONTEXT") }
            guard availableMetaContexts.count < 4096 else { throw .violation("more than 4096 metadata contexts listed") }
            availableMetaContexts.append(name)
        }

        /// An `NBD_REP_INFO` reply to GO, each type's length checked exactly.
        mutating func recordInfo(_ payload: inout ByteBuffer) throws(NBDError) {
            guard let infoType = payload.readInteger(as: UInt16.self) else {
                throw .violation("NBD_REP_INFO without an information type")
            }
            switch infoType {
            case NBDInfoType.export:
                guard payload.readableBytes == 10, let (size, flags) = payload.readMultipleIntegers(as: (UInt64, UInt16).self) else {
                    throw .violation("NBD_INFO_EXPORT of wrong length")
                }
                guard size <= NBDWire.maximumExportSize else {
                    throw .violation("export size \(size) exceeds \(NBDWire.maximumExportSize)")
                }
                self.size = size
                self.flags = NBDTransmissionFlags(rawValue: flags)
            case NBDInfoType.blockSize:
                guard payload.readableBytes == 12,
                      let (minimum, preferred, maximum) = payload.readMultipleIntegers(as: (UInt32, UInt32, UInt32).self)
                else { throw .violation("NBD_INFO_BLOCK_SIZE of wrong length") }
                let blockSize = NBDBlockSize(minimum: minimum, preferred: preferred, maximum: maximum)
                guard blockSize.isValid else {
                    throw .violation("invalid block sizes: \(blockSize)")
                }
                self.blockSize = blockSize
            case NBDInfoType.name:
                guard let bytes = payload.readBytes(length: payload.readableBytes),
                      let name = String(validating: bytes, as: UTF8.self)
                else { throw .violation("NBD_INFO_NAME is not UTF-8") }
                canonicalName = name
            case NBDInfoType.description:
                exportDescription = payload.readString(length: payload.readableBytes) ?? ""
            default:
                break  // Unknown information types are skipped, as the specification asks.
            }
        }

        /// An `NBD_REP_SERVER` reply to LIST: one export.
        mutating func recordServer(_ payload: inout ByteBuffer) throws(NBDError) {
            guard let nameLength = payload.readInteger(as: UInt32.self),
                  nameLength <= payload.readableBytes,
                  let name = payload.readString(length: Int(nameLength))
            else { throw .violation("malformed NBD_REP_SERVER reply") }
            let description = payload.readString(length: payload.readableBytes) ?? ""
            exports.append(NBDExportListing(name: name, description: description))
        }

        /// What transmission starts with.
        func exportInfo(name: String, size: UInt64) -> NBDExportInfo {
            NBDExportInfo(
                name: name,
                canonicalName: canonicalName,
                description: exportDescription,
                size: size,
                flags: flags,
                advertisedBlockSize: blockSize,
                structuredReplies: structuredReplies,
                metaContexts: metaContexts,
                availableMetaContexts: availableMetaContexts
            )
        }
    }
}
