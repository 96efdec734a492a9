import NBDProtocol
import Testing

@Suite("NBDURI")
struct URITests {
    @Test(arguments: [
        ("nbd://example.com/disk", NBDURI(transport: .tcp(host: "example.com", port: 10809), exportName: "disk")),
        ("nbd://example.com", NBDURI(transport: .tcp(host: "example.com", port: 10809))),
        ("nbd://example.com/", NBDURI(transport: .tcp(host: "example.com", port: 10809))),
        ("nbd://example.com:10810/disk", NBDURI(transport: .tcp(host: "example.com", port: 10810), exportName: "disk")),
        ("nbd://192.0.2.7:1/x", NBDURI(transport: .tcp(host: "192.0.2.7", port: 1), exportName: "x")),
        ("nbd://[::1]:12345/x", NBDURI(transport: .tcp(host: "::1", port: 12345), exportName: "x")),
        ("nbd://[::1]/x", NBDURI(transport: .tcp(host: "::1", port: 10809), exportName: "x")),
        ("nbd://[fe80::1]:65535", NBDURI(transport: .tcp(host: "fe80::1", port: 65535))),
        ("nbds://example.com/secure", NBDURI(transport: .tcp(host: "example.com", port: 10809), exportName: "secure", tls: true)),
        ("NBD://Example.com/x", NBDURI(transport: .tcp(host: "Example.com", port: 10809), exportName: "x")),
        ("nbd+unix:///name?socket=/p", NBDURI(transport: .unix(path: "/p"), exportName: "name")),
        ("nbd+unix:///?socket=/run/nbd.sock", NBDURI(transport: .unix(path: "/run/nbd.sock"))),
        ("nbds+unix:///x?socket=/run/nbd.sock", NBDURI(transport: .unix(path: "/run/nbd.sock"), exportName: "x", tls: true)),
        ("nbd+unix:///x?socket=/tmp/my%20sock", NBDURI(transport: .unix(path: "/tmp/my sock"), exportName: "x")),
        ("nbd://h/a%2Fb", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "a/b")),
        ("nbd://h/a/b", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "a/b")),
        ("nbd://h/a%20b%C3%A9", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "a bé")),
        ("nbd://h/x#fragment", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x")),
        (
            "nbds://h/x?tls-certificates=/etc/pki/nbd&tls-verify-peer=false",
            NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x", tls: true, tlsCertificates: "/etc/pki/nbd", tlsVerifyPeer: false)
        ),
        ("nbds://h/x?tls-verify-peer=true", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x", tls: true)),
        ("nbds://h/x?tls-verify-peer=0", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x", tls: true, tlsVerifyPeer: false)),
        ("nbds://h/x?tls-verify-peer=NO", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x", tls: true, tlsVerifyPeer: false)),
        (
            "nbds+unix:///x?socket=/s&tls-certificates=%2Fcerts%20dir",
            NBDURI(transport: .unix(path: "/s"), exportName: "x", tls: true, tlsCertificates: "/certs dir")
        ),
        ("nbd://h/x?unknown=1&&flag", NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x")),
    ] as [(String, NBDURI)])
    func parses(string: String, expected: NBDURI) throws {
        let uri = try NBDURI(parsing: string)
        #expect(uri == expected)
    }

    @Test func defaultPortIs10809() throws {
        guard case .tcp(_, let port) = try NBDURI(parsing: "nbd://localhost/").transport else {
            Issue.record("not TCP")
            return
        }
        #expect(port == 10809)
        #expect(NBDWire.defaultPort == 10809)
    }

    @Test(arguments: [
        "http://example.com/disk",  // unknown scheme
        "nbd+tcp://example.com/",  // unknown scheme
        "nbd:/example.com/disk",  // missing "//"
        "example.com/disk",  // no scheme at all
        "nbd+unix:///disk",  // missing socket
        "nbd+unix:///disk?socket=",  // empty socket
        "nbds+unix:///disk?tls-verify-peer=false",  // missing socket
        "nbd+unix://host/disk?socket=/p",  // a Unix transport takes no host
        "nbd://example.com:abc/disk",  // bad port
        "nbd://example.com:/disk",  // empty port
        "nbd://example.com:0/disk",  // port out of range
        "nbd://example.com:65536/disk",  // port out of range
        "nbd://[::1]x/disk",  // junk after the IPv6 address
        "nbd://[::1]:/disk",  // empty port
        "nbd://[::1/disk",  // unterminated IPv6 address
        "nbd:///disk",  // missing host
        "nbd://:10809/disk",  // missing host
        "nbd://[]:10809/disk",  // empty IPv6 host
        "nbd://[[1]/a",  // a bracket inside the brackets (found by FuzzURI)
        "nbd://[host]/a",  // brackets around something not IPv6
        "nbd://ho]st/a",  // a bracket in a plain host
        "nbd://h/%zz",  // bad percent-encoding
        "nbd://h/%4",  // truncated escape
        "nbd://h/%",  // truncated escape
        "nbd://h/%C3",  // not UTF-8
        "nbd+unix:///?socket=%G0",  // bad percent-encoding in the query
        "nbd://h/x?%zz=1",  // bad percent-encoding in a query key
    ])
    func rejects(string: String) {
        let error = #expect(throws: NBDError.self) { try NBDURI(parsing: string) }
        #expect(error?.code == .invalidURI)
        #expect(error?.message.contains(string) == true)
    }

    @Test(arguments: [
        (NBDURI(transport: .tcp(host: "example.com", port: 10809), exportName: "disk"), "nbd://example.com/disk"),
        (NBDURI(transport: .tcp(host: "example.com", port: 10810), exportName: "disk"), "nbd://example.com:10810/disk"),
        (NBDURI(transport: .tcp(host: "::1", port: 12345)), "nbd://[::1]:12345/"),
        (NBDURI(transport: .tcp(host: "::1", port: 10809), tls: true), "nbds://[::1]/"),
        (NBDURI(transport: .unix(path: "/run/nbd.sock"), exportName: "disk"), "nbd+unix:///disk?socket=/run/nbd.sock"),
        (NBDURI(transport: .unix(path: "/tmp/my sock"), tls: true), "nbds+unix:///?socket=/tmp/my%20sock"),
        (NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "a b/c?d#e"), "nbd://h/a%20b/c%3Fd%23e"),
        (NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "é"), "nbd://h/%C3%A9"),
        (
            NBDURI(transport: .tcp(host: "h", port: 10809), exportName: "x", tls: true, tlsCertificates: "/etc/pki", tlsVerifyPeer: false),
            "nbds://h/x?tls-certificates=/etc/pki&tls-verify-peer=false"
        ),
    ] as [(NBDURI, String)])
    func describes(uri: NBDURI, expected: String) throws {
        #expect(uri.description == expected)
        #expect(try NBDURI(parsing: uri.description) == uri)
    }

    @Test(arguments: [
        "nbd://example.com/disk",
        "nbd://example.com:10810/",
        "nbds://[::1]:10999/a%2Fb",
        "nbd+unix:///name?socket=/p",
        "nbds+unix:///?socket=/run/nbd.sock&tls-certificates=/certs&tls-verify-peer=false",
        "nbd://h/%25%26%3D%3F",
        "nbd://h//leading-slash",
    ])
    func roundTrips(string: String) throws {
        let uri = try NBDURI(parsing: string)
        let again = try NBDURI(parsing: uri.description)
        #expect(again == uri)
        #expect(again.description == uri.description)
    }

    @Test func percentCoding() {
        #expect(NBDURI.percentDecode("a%2fb%2F") == "a/b/")
        #expect(NBDURI.percentDecode("plain") == "plain")
        #expect(NBDURI.percentDecode("%") == nil)
        #expect(NBDURI.percentDecode("%FF") == nil)
        #expect(NBDURI.percentEncode("a-b_c.d~e/f g%") == "a-b_c.d~e/f%20g%25")
        #expect(NBDURI.percentEncode("\u{1}") == "%01")
    }

    /// A `#` ends the query too (RFC 3986): the fragment must not leak into the socket path.
    @Test func fragmentAfterQueryIsNotPartOfTheSocketPath() throws {
        let uri = try NBDURI(parsing: "nbd+unix:///disk?socket=/tmp/nbd.sock#fragment")
        #expect(uri.transport == .unix(path: "/tmp/nbd.sock"))
    }
}
