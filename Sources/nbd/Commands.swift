import ArgumentParser
import Foundation
import NBDClient
import NBDProtocol
import NIOCore

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the exports of a server (NBD_OPT_LIST).")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await reportingErrors {
            let exports = try await NBDClient.list(connection.uri, configuration: connection.clientConfiguration, logger: connection.client.logger)
            if json {
                struct Listing: Encodable { var exports: [Entry] }
                struct Entry: Encodable { var name: String; var description: String }
                try StandardStreams.writeJSON(Listing(exports: exports.map { Entry(name: $0.name, description: $0.description) }))
            } else {
                for export in exports {
                    StandardStreams.writeOutput(export.description.isEmpty ? "\(export.name)\n" : "\(export.name)\t\(export.description)\n")
                }
            }
        }
    }
}

struct InfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show an export's size, flags and block sizes.")

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print JSON (the REST gateway's metadata fields).") var json = false

    func run() async throws {
        try await reportingErrors {
            let client = try await connection.connect()
            let metadata = NBDExportMetadata(client.info)
            await client.disconnect()
            if json {
                try StandardStreams.writeJSON(metadata)
                return
            }
            let flags: [(String, Bool)] = [
                ("read_only", metadata.readOnly), ("rotational", metadata.rotational), ("can_flush", metadata.canFlush),
                ("can_fua", metadata.canFua), ("can_trim", metadata.canTrim), ("can_zero", metadata.canZero),
                ("can_fast_zero", metadata.canFastZero), ("can_df", metadata.canDf), ("can_multi_conn", metadata.canMultiConn),
                ("can_cache", metadata.canCache), ("structured_replies", metadata.structuredReplies),
            ]
            var text = "export: \"\(metadata.name)\"\n"
            if !metadata.description.isEmpty { text += "description: \(metadata.description)\n" }
            text += "size: \(metadata.size)\n"
            for (name, value) in flags { text += "\(name): \(value)\n" }
            text += "block_size: minimum \(metadata.blockSize.minimum), preferred \(metadata.blockSize.preferred), maximum \(metadata.blockSize.maximum)\n"
            text += "contexts: \(metadata.contexts.joined(separator: ", "))\n"
            StandardStreams.writeOutput(text)
        }
    }
}

struct ReadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "read", abstract: "Read bytes from an export to a file or stdout.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Byte offset to start at.") var offset: UInt64 = 0
    @Option(help: "Bytes to read (default: to the end).") var length: UInt64?
    @Option(name: [.short, .customLong("output")], help: "Output file (default: stdout).") var output: String?
    @Flag(help: "Show a progress bar on a terminal.") var progress = false
    @Option(name: .customLong("read-retries"), help: "Attempts after a transient failure (EIO, a lost connection, a timeout), from the first byte not yet written.")
    var readRetries = 3

    func run() async throws {
        try await reportingErrors {
            var client = try await connection.connect()
            do {
                guard offset <= client.size else {
                    throw NBDError(.outOfBounds, "offset \(offset) is past the end of the export (size \(client.size))")
                }
                let total = length ?? (client.size - offset)
                guard total <= client.size - offset else {
                    throw NBDError(.outOfBounds, "offset \(offset) + length \(total) passes the end of the export (size \(client.size))")
                }
                let sink = try await OutputFile.open(output)
                let bar = ProgressBar(enabled: progress, total: total)
                let retry = NBDReadRetry(attempts: readRetries)
                // EIO replies are read again inside readStream; a lost connection is replaced
                // here and the read goes on from the first byte not yet written out.
                var position = offset
                let end = offset + total
                try await retry.run(progress: { position }, retryable: NBDReadRetry.needsNewConnection) {
                    if !client.isActive {
                        await client.disconnect()
                        client = try await connection.connect()
                    }
                    try await client.readStream(at: position, length: end - position, chunkSize: 4 << 20, window: 8, retry: retry) { buffer in
                        try await sink.write(buffer)
                        position += UInt64(buffer.readableBytes)
                        bar.advance(by: UInt64(buffer.readableBytes))
                    }
                }
                try await sink.close()
                bar.finish()
            } catch {
                await client.disconnect()
                throw error
            }
            await client.disconnect()
        }
    }
}

struct WriteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "write", abstract: "Write a file or stdin to an export.")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Byte offset to start at.") var offset: UInt64 = 0
    @Flag(help: "Force unit access: each write is durable before it is acknowledged.") var fua = false
    @Flag(help: "Show a progress bar on a terminal.") var progress = false
    @Argument(help: "Input file (default: stdin).") var file: String?

    func run() async throws {
        try await reportingErrors {
            let client = try await connection.connect()
            do {
                let source = try await InputFile.open(file)
                let bar = ProgressBar(enabled: progress, total: source.size)
                var position = offset
                var inFlight: [Task<Void, any Error>] = []
                while let buffer = try await source.read(maximum: 4 << 20) {
                    let at = position
                    position += UInt64(buffer.readableBytes)
                    inFlight.append(Task { try await client.write(at: at, buffer, fua: fua) })
                    if inFlight.count >= 8 { try await inFlight.removeFirst().value }
                    bar.advance(by: UInt64(buffer.readableBytes))
                }
                for task in inFlight { try await task.value }
                try await source.close()
                bar.finish()
            } catch {
                await client.disconnect()
                throw error
            }
            await client.disconnect()
        }
    }
}

struct MapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "map", abstract: "Show allocation extents (base:allocation).")

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Byte offset to start at.") var offset: UInt64 = 0
    @Option(help: "Bytes to map (default: to the end).") var length: UInt64?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try await reportingErrors {
            let client = try await connection.connect()
            let extents: [NBDExtent]
            do {
                guard offset < client.size else {
                    throw NBDError(.outOfBounds, "offset \(offset) is not inside the export (size \(client.size))")
                }
                extents = try await client.blockStatus(at: offset, length: length ?? (client.size - offset))
            } catch {
                await client.disconnect()
                throw error
            }
            await client.disconnect()
            if json {
                struct Entry: Encodable {
                    var offset: UInt64, length: UInt64, type: UInt32, description: String, hole: Bool, zero: Bool
                }
                try StandardStreams.writeJSON(extents.map {
                    Entry(offset: $0.offset, length: $0.length, type: $0.flags, description: $0.kind, hole: $0.isHole, zero: $0.isZero)
                })
            } else {
                var text = ""
                for extent in extents {
                    text += "\(pad(extent.offset, 12)) \(pad(extent.length, 12)) \(pad(UInt64(extent.flags), 4))  \(extent.kind)\n"
                }
                StandardStreams.writeOutput(text)
            }
        }
    }

    private func pad(_ value: UInt64, _ width: Int) -> String {
        let text = String(value)
        return String(repeating: " ", count: max(0, width - text.count)) + text
    }
}

extension NBDExtent {
    /// The words `nbdinfo --map` uses.
    var kind: String {
        switch (isHole, isZero) {
        case (true, true): "hole,zero"
        case (true, false): "hole"
        case (false, true): "zero"
        case (false, false): "data"
        }
    }
}
