import NBDProtocol
import NIOCore
import Testing

@Suite("NBDHandshakeStateMachine")
struct HandshakeStateMachineTests {
    static let disk = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"))
    static let diskSimple = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), structuredReplies: false)
    static let listing = NBDHandshakeStateMachine.Configuration(goal: .list)

    /// HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | CAN_MULTI_CONN
    static let exportFlags: UInt16 = 0x012D

    /// Server messages up to (not including) the GO replies, for a structured, base:allocation run.
    static let beforeGo: [Input] = [
        .server(Server.greeting(flags: 0x0003)),
        .server(Server.ack(8)),
        .server(Server.metaContext(id: 7, name: "base:allocation")),
        .server(Server.ack(10)),
    ]

    static let goReplies: [Input] = [
        .server(Server.infoExport(size: 1 << 30, flags: exportFlags)),
        .server(Server.infoBlockSize(512, 4096, 32 << 20)),
        .server(Server.info(2, BE.text("my disk"))),
        .server(Server.info(0x2A, [0xDE, 0xAD, 0xBE, 0xEF, 0x00])),  // unknown type: skipped
        .server(Server.ack(7)),
    ]

    static let negotiatedDisk = NBDExportInfo(
        name: "disk",
        canonicalName: nil,
        description: "my disk",
        size: 1 << 30,
        flags: NBDTransmissionFlags(rawValue: exportFlags),
        advertisedBlockSize: NBDBlockSize(minimum: 512, preferred: 4096, maximum: 32 << 20),
        structuredReplies: true,
        metaContexts: ["base:allocation": 7]
    )

    // MARK: - Complete negotiation

    @Test func fullNegotiationSendsExactBytesAndReportsEverything() throws {
        let run = handshake(Self.disk, Self.beforeGo + Self.goReplies)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.setMetaContextDisk),
            .send(Client.goDisk),
            .negotiated(Self.negotiatedDisk),
        ])
        guard case .negotiated(let info)? = run.steps.last else {
            Issue.record("did not negotiate")
            return
        }
        #expect(info.size == 1_073_741_824)
        #expect(info.flags == [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .canMultiConn])
        #expect(info.canFlush && info.canFUA && info.canTrim && info.canMultiConn)
        #expect(!info.isReadOnly && !info.canZero && !info.canCache && !info.isRotational)
        #expect(info.advertisedBlockSize == NBDBlockSize(minimum: 512, preferred: 4096, maximum: 33_554_432))
        #expect(info.blockSize == NBDBlockSize(minimum: 512, preferred: 4096, maximum: 33_554_432))
        #expect(info.metaContexts == ["base:allocation": 7])
        #expect(info.canBlockStatus)
        #expect(info.structuredReplies)
        #expect(info.description == "my disk")
        #expect(info.canonicalName == nil)
        #expect(!run.machine.isActive)
    }

    @Test func bytesAfterGoAckAreLeftForTransmission() {
        let transmission: [UInt8] = Magic.simpleReply + [0, 0, 0, 0] + BE.u64(1)
        let run = handshake(Self.disk, Self.beforeGo + Self.goReplies + [.server(transmission)])
        #expect(run.steps.last == .negotiated(Self.negotiatedDisk))
        #expect(run.buffer.bytes == transmission)
    }

    @Test func infoNameIsReportedAsCanonicalName() {
        let replies: [Input] = [
            .server(Server.info(1, BE.text("disk-canonical"))),
            .server(Server.infoExport(size: 4096, flags: 0x0003)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.disk, Self.beforeGo + replies)
        var expected = NBDExportInfo(name: "disk", size: 4096, flags: [.hasFlags, .readOnly], structuredReplies: true)
        expected.canonicalName = "disk-canonical"
        expected.metaContexts = ["base:allocation": 7]
        #expect(run.steps.last == .negotiated(expected))
        guard case .negotiated(let info)? = run.steps.last else { return }
        #expect(info.isReadOnly)
        #expect(info.advertisedBlockSize == nil)
        #expect(info.blockSize == .unadvertised)
    }

    @Test func serverWithoutNoZeroesGetsOnlyFixedNewstyleFlag() {
        let run = handshake(Self.diskSimple, [.server(Server.greeting(flags: 0x0001))])
        #expect(run.steps == [.send(Client.flagsFixedOnly + Client.goDisk)])
        #expect(run.machine.isActive)
    }

    @Test func hugeMaximumBlockSizeIsCappedForRequests() {
        let replies: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.infoExport(size: 1 << 40, flags: 0x0001)),
            .server(Server.infoBlockSize(1, 512, 0xFFFF_FFFF)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.diskSimple, replies)
        guard case .negotiated(let info)? = run.steps.last else {
            Issue.record("did not negotiate: \(run.steps)")
            return
        }
        #expect(info.advertisedBlockSize == NBDBlockSize(minimum: 1, preferred: 512, maximum: 0xFFFF_FFFF))
        #expect(info.blockSize == NBDBlockSize(minimum: 1, preferred: 512, maximum: 32 << 20))
    }

    // MARK: - Structured replies and metadata contexts

    @Test func refusedStructuredRepliesSkipMetaContext() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.error(8, .unsupported, message: "no structured replies here")),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.disk, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.goDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 512, flags: .hasFlags, structuredReplies: false, metaContexts: [:])),
        ])
    }

    @Test func structuredRepliesNotAskedForSendsGoStraightAway() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.goDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 512, flags: .hasFlags)),
        ])
    }

    @Test func noMetaContextsConfiguredSkipsSetMetaContext() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), metaContexts: [])
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(8)),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(configuration, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.goDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 512, flags: .hasFlags, structuredReplies: true)),
        ])
    }

    @Test func refusedMetaContextCarriesOnWithoutBlockStatus() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(8)),
            .server(Server.metaContext(id: 7, name: "base:allocation")),
            .server(Server.error(10, .invalid)),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.disk, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.setMetaContextDisk),
            .send(Client.goDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 512, flags: .hasFlags, structuredReplies: true, metaContexts: [:])),
        ])
        guard case .negotiated(let info)? = run.steps.last else { return }
        #expect(!info.canBlockStatus)
    }

    @Test func listedContextsWithAWantedPrefixAreRequestedToo() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), listedContextPrefixes: ["qemu:dirty-bitmap:"])
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(8)),
            .server(Server.metaContext(id: 0, name: "base:allocation", option: 9)),
            .server(Server.metaContext(id: 0, name: "qemu:allocation-depth", option: 9)),
            .server(Server.metaContext(id: 0, name: "qemu:dirty-bitmap:b0", option: 9)),
            .server(Server.ack(9)),
            .server(Server.metaContext(id: 7, name: "base:allocation")),
            .server(Server.metaContext(id: 8, name: "qemu:dirty-bitmap:b0")),
            .server(Server.ack(10)),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(configuration, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.listMetaContextDisk),
            .send(Client.setMetaContextDiskAndBitmap),
            .send(Client.goDisk),
            .negotiated(NBDExportInfo(
                name: "disk", size: 512, flags: .hasFlags, structuredReplies: true,
                metaContexts: ["base:allocation": 7, "qemu:dirty-bitmap:b0": 8],
                availableMetaContexts: ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0"]
            )),
        ])
    }

    @Test func refusedListStillRequestsTheConfiguredContexts() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), listedContextPrefixes: ["qemu:"])
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(8)),
            .server(Server.error(9, .unsupported)),
            .server(Server.metaContext(id: 7, name: "base:allocation")),
            .server(Server.ack(10)),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(configuration, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.listMetaContextDisk),
            .send(Client.setMetaContextDisk),
            .send(Client.goDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 512, flags: .hasFlags, structuredReplies: true, metaContexts: ["base:allocation": 7])),
        ])
    }

    @Test func malformedListedContextIsAViolation() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), listedContextPrefixes: ["qemu:"])
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(8)),
            .server(Server.optionReply(option: 9, type: 4, payload: [0, 0])),
        ]
        let run = handshake(configuration, inputs)
        guard case .fail(let code, _, _, _)? = run.steps.last else {
            Issue.record("did not fail: \(run.steps)")
            return
        }
        #expect(code == .protocolViolation)
    }

    @Test func metaContextAckWithoutContextsGivesNone() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(8)),
            .server(Server.ack(10)),
            .server(Server.infoExport(size: 512, flags: 0x0001)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.disk, inputs)
        #expect(run.steps.last == .negotiated(NBDExportInfo(name: "disk", size: 512, flags: .hasFlags, structuredReplies: true)))
    }

    // MARK: - EXPORT_NAME fallback

    @Test func goUnsupportedFallsBackToExportNameWithNoZeroes() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.error(7, .unsupported, message: "what is GO?")),
            .server(BE.u64(0x1_0000) + BE.u16(0x0003)),  // 10 bytes: size, flags
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.goDisk),
            .send(Client.exportNameDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 65536, flags: [.hasFlags, .readOnly])),
        ])
        #expect(run.buffer.readableBytes == 0)
    }

    @Test func exportNameReplyWithoutNoZeroesIs134Bytes() {
        let reply = BE.u64(0x1_0000) + BE.u16(0x0001) + [UInt8](repeating: 0, count: 124)
        #expect(reply.count == 134)
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0001)),
            .server(Server.error(7, .unsupported)),
            .server(reply),
            .server([0x67, 0x44]),  // the start of transmission: must stay unread
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [
            .send(Client.flagsFixedOnly + Client.goDisk),
            .send(Client.exportNameDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 65536, flags: .hasFlags)),
        ])
        #expect(run.buffer.bytes == [0x67, 0x44])
    }

    @Test func exportNameReplyWithoutNoZeroesWaitsForThePadding() {
        var driver = HandshakeDriver(Self.diskSimple)
        driver.apply(.server(Server.greeting(flags: 0x0001)), byteByByte: false)
        driver.apply(.server(Server.error(7, .unsupported)), byteByByte: false)
        // Size and flags alone are not enough without NO_ZEROES: 124 zero bytes must follow.
        driver.apply(.server(BE.u64(4096) + BE.u16(0x0001) + [UInt8](repeating: 0, count: 123)), byteByByte: false)
        #expect(driver.steps == [.send(Client.flagsFixedOnly + Client.goDisk), .send(Client.exportNameDisk)])
        driver.apply(.server([0]), byteByByte: false)
        #expect(driver.steps.last == .negotiated(NBDExportInfo(name: "disk", size: 4096, flags: .hasFlags)))
    }

    @Test func exportNameFallbackKeepsStructuredRepliesAndContexts() {
        let inputs = Self.beforeGo + [
            .server(Server.error(7, .unsupported)),
            .server(BE.u64(8192) + BE.u16(0x0001)),
        ]
        let run = handshake(Self.disk, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.setMetaContextDisk),
            .send(Client.goDisk),
            .send(Client.exportNameDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 8192, flags: .hasFlags, structuredReplies: true, metaContexts: ["base:allocation": 7])),
        ])
    }

    @Test func hangUpAfterExportNameMeansUnknownExport() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.error(7, .unsupported)),
            .server([0x00, 0x00, 0x00]),  // a partial reply, then the server hangs up
            .closed,
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.goDisk),
            .send(Client.exportNameDisk),
            .closed(.unknownExport, exportName: "disk"),
        ])
        #expect(!run.machine.isActive)
    }

    @Test func hangUpAtOtherTimesIsConnectionLost() {
        var beforeGreeting = HandshakeDriver(Self.disk)
        beforeGreeting.apply(.server(Array(Server.greeting(flags: 3).prefix(10))), byteByByte: false)
        beforeGreeting.apply(.closed, byteByByte: false)
        #expect(beforeGreeting.steps == [.closed(.connectionLost, exportName: nil)])

        let during = handshake(Self.disk, [.server(Server.greeting(flags: 3)), .closed])
        #expect(during.steps == [.send(Client.flagsNoZeroes + Client.structuredReply), .closed(.connectionLost, exportName: nil)])

        var after = HandshakeDriver(Self.disk)
        for input in Self.beforeGo + Self.goReplies { after.apply(input, byteByByte: false) }
        var machine = after.machine
        #expect(machine.connectionClosed().code == .connectionLost)
    }

    // MARK: - GO errors

    @Test func goUnknownExportFailsWithOptionErrorAndAborts() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.error(7, .unknown, message: "no such export")),
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.goDisk),
            .fail(.unknownExport, optionError: .unknown, exportName: "disk", farewell: Client.abort),
        ])
        var machine = NBDHandshakeStateMachine(configuration: Self.diskSimple)
        var buffer = ByteBuffer(bytes: Server.greeting(flags: 3) + Server.error(7, .unknown, message: "no such export"))
        _ = machine.receive(&buffer)
        guard case .fail(let error, _) = machine.receive(&buffer) else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.message.contains("no such export"))
        #expect(error.nbdErrorName == "NBD_REP_ERR_UNKNOWN")
    }

    @Test(arguments: [
        (NBDOptionError.policy, NBDError.Code.optionRefused),
        (.invalid, .optionRefused),
        (.platform, .optionRefused),
        (.shutdown, .optionRefused),
        (.blockSizeRequired, .optionRefused),
        (.tooBig, .optionRefused),
        (NBDOptionError(rawValue: 0x8000_0042), .optionRefused),
        (.tlsRequired, .tlsRequired),
        (.unknown, .unknownExport),
    ] as [(NBDOptionError, NBDError.Code)])
    func goErrorsMapToCodes(optionError: NBDOptionError, code: NBDError.Code) {
        let run = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(Server.error(7, optionError))])
        #expect(run.steps.last == .fail(code, optionError: optionError, exportName: "disk", farewell: Client.abort))
    }

    @Test func tlsRequiredOnStructuredReplyFails() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.error(8, .tlsRequired, message: "use TLS")),
        ]
        let run = handshake(Self.disk, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .fail(.tlsRequired, optionError: .tlsRequired, exportName: "disk", farewell: Client.abort),
        ])
    }

    @Test func tlsRequiredOnListFails() {
        let run = handshake(Self.listing, [.server(Server.greeting(flags: 3)), .server(Server.error(3, .tlsRequired))])
        #expect(run.steps.last == .fail(.tlsRequired, optionError: .tlsRequired, exportName: nil, farewell: Client.abort))
    }

    // MARK: - LIST

    @Test func listCollectsServersWithAndWithoutDescriptions() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.server(name: "first")),
            .server(Server.server(name: "second", description: "the second export")),
            .server(Server.server(name: "")),
            .server(Server.ack(3)),
        ]
        let run = handshake(Self.listing, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.list),
            .listed(
                [
                    NBDExportListing(name: "first", description: ""),
                    NBDExportListing(name: "second", description: "the second export"),
                    NBDExportListing(name: "", description: ""),
                ],
                abort: Client.abort
            ),
        ])
        #expect(!run.machine.isActive)
    }

    @Test func listWithNoExports() {
        let run = handshake(Self.listing, [.server(Server.greeting(flags: 1)), .server(Server.ack(3))])
        #expect(run.steps == [.send(Client.flagsFixedOnly + Client.list), .listed([], abort: Client.abort)])
    }

    @Test func listRefusedByPolicy() {
        let run = handshake(Self.listing, [.server(Server.greeting(flags: 3)), .server(Server.error(3, .policy, message: "no"))])
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.list),
            .fail(.listingRefused, optionError: .policy, exportName: nil, farewell: Client.abort),
        ])
    }

    @Test func listUnsupported() {
        let run = handshake(Self.listing, [.server(Server.greeting(flags: 3)), .server(Server.error(3, .unsupported))])
        #expect(run.steps.last == .fail(.listingUnsupported, optionError: .unsupported, exportName: nil, farewell: Client.abort))
    }

    @Test func listOtherErrorIsOptionRefused() {
        let run = handshake(Self.listing, [.server(Server.greeting(flags: 3)), .server(Server.error(3, .invalid))])
        #expect(run.steps.last == .fail(.optionRefused, optionError: .invalid, exportName: nil, farewell: Client.abort))
    }

    @Test func listOnOldstyleServerIsUnsupported() {
        let run = handshake(Self.listing, [.server(Magic.nbd + Magic.oldstyle)])
        #expect(run.steps == [.fail(.listingUnsupported, optionError: nil, exportName: nil, farewell: nil)])
    }

    @Test func malformedServerReplyIsAViolation() {
        // Name length 10, but only 3 bytes follow.
        let bad = Server.optionReply(option: 3, type: 2, payload: BE.u32(10) + BE.text("abc"))
        let run = handshake(Self.listing, [.server(Server.greeting(flags: 3)), .server(bad)])
        #expect(run.steps.last == .violation())
    }

    // MARK: - STARTTLS

    @Test func startTLSThenNegotiateOverTLS() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), useTLS: true)
        let inputs: [Input] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(5)),
            .tlsEstablished,
        ] + Self.beforeGo.dropFirst() + Self.goReplies
        let run = handshake(configuration, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.startTLS),
            .sendAndStartTLS([]),
            .send(Client.structuredReply),
            .send(Client.setMetaContextDisk),
            .send(Client.goDisk),
            .negotiated(Self.negotiatedDisk),
        ])
    }

    @Test func bytesDuringTLSHandshakeAreIgnored() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .list, useTLS: true)
        var driver = HandshakeDriver(configuration)
        driver.apply(.server(Server.greeting(flags: 3)), byteByByte: false)
        driver.apply(.server(Server.ack(5)), byteByByte: false)
        #expect(driver.steps == [.send(Client.flagsNoZeroes + Client.startTLS), .sendAndStartTLS([])])
        var tlsBytes = ByteBuffer(bytes: [0x16, 0x03, 0x01])
        guard case .wait = driver.machine.receive(&tlsBytes) else {
            Issue.record("bytes during TLS were acted on")
            return
        }
        #expect(tlsBytes.readableBytes == 3)
        driver.apply(.tlsEstablished, byteByByte: false)
        driver.apply(.server(Server.server(name: "secure") + Server.ack(3)), byteByByte: false)
        #expect(driver.steps.suffix(2) == [
            .send(Client.list),
            .listed([NBDExportListing(name: "secure", description: "")], abort: Client.abort),
        ])
    }

    @Test func startTLSRefusedIsTLSFailure() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), useTLS: true)
        let run = handshake(configuration, [.server(Server.greeting(flags: 3)), .server(Server.error(5, .policy))])
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.startTLS),
            .fail(.tlsFailure, optionError: .policy, exportName: nil, farewell: Client.abort),
        ])
    }

    @Test func tlsEstablishedAtTheWrongTimeIsAViolation() {
        let run = handshake(Self.disk, [.server(Server.greeting(flags: 3)), .tlsEstablished])
        #expect(run.steps == [.send(Client.flagsNoZeroes + Client.structuredReply), .violation()])
    }

    // MARK: - Hostile servers

    @Test func badGreetingMagic() {
        var greeting = Server.greeting(flags: 3)
        greeting[0] = 0x4F
        #expect(handshake(Self.disk, [.server(greeting)]).steps == [.violation()])
    }

    @Test func badSecondGreetingMagic() {
        var greeting = Server.greeting(flags: 3)
        greeting[15] = 0x55
        #expect(handshake(Self.disk, [.server(greeting)]).steps == [.violation()])
    }

    @Test func oldstyleServerIsUnsupported() {
        // The oldstyle greeting: magic, oldstyle magic, size, flags, 124 zeroes.
        let greeting = Magic.nbd + Magic.oldstyle + BE.u64(1 << 20) + BE.u32(1) + [UInt8](repeating: 0, count: 124)
        let run = handshake(Self.disk, [.server(greeting)])
        #expect(run.steps == [.fail(.unsupportedServer, optionError: nil, exportName: nil, farewell: nil)])
    }

    @Test func serverWithoutFixedNewstyleIsUnsupported() {
        let run = handshake(Self.disk, [.server(Server.greeting(flags: 0x0002))])
        #expect(run.steps == [.fail(.unsupportedServer, optionError: nil, exportName: nil, farewell: nil)])
    }

    @Test func badOptionReplyMagic() {
        var reply = Server.ack(8)
        reply[7] ^= 0xFF
        let run = handshake(Self.disk, [.server(Server.greeting(flags: 3)), .server(reply)])
        #expect(run.steps == [.send(Client.flagsNoZeroes + Client.structuredReply), .violation()])
    }

    @Test func replyForADifferentOption() {
        let run = handshake(Self.disk, [.server(Server.greeting(flags: 3)), .server(Server.ack(7))])
        #expect(run.steps == [.send(Client.flagsNoZeroes + Client.structuredReply), .violation()])
    }

    @Test func oversizedOptionReplyFailsWithoutWaitingForItsBytes() {
        // Only the 20-byte header is fed: a length over 16 MiB must fail right away.
        let header = Magic.optionReply + BE.u32(7) + BE.u32(3) + BE.u32((16 << 20) + 1)
        let run = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(header)])
        #expect(run.steps == [.send(Client.flagsNoZeroes + Client.goDisk), .violation()])

        // Exactly 16 MiB is allowed: the machine waits for the payload.
        let limit = Magic.optionReply + BE.u32(7) + BE.u32(3) + BE.u32(16 << 20)
        let waiting = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(limit)])
        #expect(waiting.steps == [.send(Client.flagsNoZeroes + Client.goDisk)])
        #expect(waiting.machine.isActive)
    }

    @Test(arguments: [
        BE.u64(1 << 20) + BE.u16(1) + [0],  // 11 bytes
        Array(BE.u64(1 << 20).prefix(7)) + BE.u16(1),  // 9 bytes
        [UInt8](),  // type only
    ])
    func infoExportWithWrongLength(payload: [UInt8]) {
        let run = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(Server.info(0, payload))])
        #expect(run.steps.last == .violation())
    }

    @Test func infoWithoutType() {
        let run = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(Server.optionReply(option: 7, type: 3, payload: [0]))])
        #expect(run.steps.last == .violation())
    }

    @Test func blockSizeInfoWithWrongLength() {
        let run = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(Server.info(3, BE.u32(512) + BE.u32(4096)))])
        #expect(run.steps.last == .violation())
    }

    @Test(arguments: [
        (0, 512, 4096),  // minimum zero
        (3, 512, 4096),  // minimum not a power of two
        (128 << 10, 128 << 10, 1 << 20),  // minimum above 64 KiB
        (1, 256, 4096),  // preferred below 512
        (4096, 2048, 8192),  // preferred below minimum
        (512, 3000, 8192),  // preferred not a power of two
        (512, 4096, 2048),  // maximum below preferred
    ] as [(UInt32, UInt32, UInt32)])
    func invalidBlockSizes(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        #expect(!NBDBlockSize(minimum: minimum, preferred: preferred, maximum: maximum).isValid)
        let inputs: [Input] = [
            .server(Server.greeting(flags: 3)),
            .server(Server.infoExport(size: 1 << 20, flags: 1)),
            .server(Server.infoBlockSize(minimum, preferred, maximum)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [.send(Client.flagsNoZeroes + Client.goDisk), .violation()])
    }

    @Test(arguments: [
        (1, 512, 512),
        (512, 512, 0xFFFF_FFFF),
        (65536, 65536, 65536),
        (4096, 4096, 32 << 20),
    ] as [(UInt32, UInt32, UInt32)])
    func validBlockSizes(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        #expect(NBDBlockSize(minimum: minimum, preferred: preferred, maximum: maximum).isValid)
    }

    @Test func goAckWithoutInfoExport() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 3)),
            .server(Server.infoBlockSize(512, 4096, 1 << 20)),
            .server(Server.ack(7)),
        ]
        let run = handshake(Self.diskSimple, inputs)
        #expect(run.steps == [.send(Client.flagsNoZeroes + Client.goDisk), .violation()])
    }

    @Test func metaContextNotAskedFor() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 3)),
            .server(Server.ack(8)),
            .server(Server.metaContext(id: 1, name: "qemu:dirty-bitmap:b0")),
        ]
        let run = handshake(Self.disk, inputs)
        #expect(run.steps == [
            .send(Client.flagsNoZeroes + Client.structuredReply),
            .send(Client.setMetaContextDisk),
            .violation(),
        ])
    }

    @Test func shortMetaContextReply() {
        let inputs: [Input] = [
            .server(Server.greeting(flags: 3)),
            .server(Server.ack(8)),
            .server(Server.optionReply(option: 10, type: 4, payload: [0, 0])),
        ]
        #expect(handshake(Self.disk, inputs).steps.last == .violation())
    }

    @Test func unexpectedReplyTypes() {
        // SERVER in answer to STRUCTURED_REPLY, and META_CONTEXT in answer to GO.
        let structured = handshake(Self.disk, [.server(Server.greeting(flags: 3)), .server(Server.optionReply(option: 8, type: 2))])
        #expect(structured.steps.last == .violation())
        let go = handshake(Self.diskSimple, [.server(Server.greeting(flags: 3)), .server(Server.optionReply(option: 7, type: 4, payload: BE.u32(1)))])
        #expect(go.steps.last == .violation())
    }

    @Test func nothingIsAcceptedAfterFailure() {
        var driver = HandshakeDriver(Self.disk)
        driver.apply(.server([0xFF] + [UInt8](repeating: 0, count: 17)), byteByByte: false)
        #expect(driver.steps == [.violation()])
        #expect(!driver.machine.isActive)
        var more = ByteBuffer(bytes: Server.greeting(flags: 3))
        guard case .wait = driver.machine.receive(&more) else {
            Issue.record("a finished machine acted on more bytes")
            return
        }
    }
}
