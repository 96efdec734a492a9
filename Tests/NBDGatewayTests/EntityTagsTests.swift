@testable import NBDGateway
import Testing

/// The parts of a strong ETag, on exact strings (the export's part is kept per pool, not
/// hashed per request).
@Suite("EntityTags")
struct EntityTagsTests {
    @Test("INSTANCE-IDENTITY-GENERATION, the identity 8 hex digits of the name's SHA-256, kept by the export")
    func tagParts() {
        let tags = EntityTags(instance: "5eed")
        #expect(EntityTags.identity("disk") == "1044dec7")
        #expect(EntityTags.identity("a/b") == "c14cddc0")
        #expect(tags.tag(identity: EntityTags.identity("disk"), generation: 7) == "\"5eed-1044dec7-7\"")
        #expect(tags.tag(identity: EntityTags.identity("a/b"), generation: 0) == "\"5eed-c14cddc0-0\"")
        #expect(MemoryExport(name: "a/b", disk: MemoryDisk(name: "a/b")).tagIdentity == "c14cddc0")
    }
}
