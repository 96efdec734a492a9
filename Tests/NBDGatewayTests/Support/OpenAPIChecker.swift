import Foundation
import NBDTestSupport

/// Checks recorded responses against openapi.yaml with a Python script (python3 on PATH has
/// PyYAML, jsonschema and referencing). The script lives here as a string, written to a
/// temporary file when used: a `.py` file in the test target would make SwiftPM warn about
/// an unhandled file, and Package.swift is not ours to change.
enum OpenAPIChecker {
    /// Runs the checker on `entries`; returns one line per problem (empty: all conform).
    static func check(_ entries: [RecordedResponse]) async throws -> [String] {
        try await checkEach(entries).flatMap { $0 }
    }

    /// The problems of each entry apart, from one run of the script (one Python start per
    /// batch: under a loaded test run a start costs seconds).
    static func checkEach(_ entries: [RecordedResponse]) async throws -> [[String]] {
        let lines = try entries.map { entry -> String in
            String(decoding: try JSONSerialization.data(withJSONObject: entry.jsonObject), as: UTF8.self)
        }
        var problems = Array(repeating: [String](), count: entries.count)
        for line in try await run(mode: "check", input: lines.joined(separator: "\n") + "\n") {
            let parts = line.split(separator: "\t", maxSplits: 1)
            guard parts.count == 2, let index = Int(parts[0]), problems.indices.contains(index) else {
                throw TestFailure("the OpenAPI checker printed an unexpected line: \(line)")
            }
            problems[index].append(String(parts[1]))
        }
        return problems
    }

    /// `METHOD /path/template` for every operation of the contract.
    static func operations() async throws -> [(method: String, path: String)] {
        try await run(mode: "operations", input: "").map { line in
            let parts = line.split(separator: " ", maxSplits: 1)
            return (String(parts[0]), String(parts[1]))
        }
    }

    private static func run(mode: String, input: String) async throws -> [String] {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let script = directory.appendingPathComponent("openapi_check.py")
        let records = directory.appendingPathComponent("responses.jsonl")
        try source.write(to: script, atomically: true, encoding: .utf8)
        try input.write(to: records, atomically: true, encoding: .utf8)
        let result = try await runProcess("python3", [script.path, mode, Paths.openAPI.path, records.path], timeout: .seconds(60), check: false)
        guard result.status == 0 || result.status == 1 else {
            throw TestFailure("the OpenAPI checker failed (\(result.status)): \(result.stderrText)")
        }
        return result.stdoutText.split(separator: "\n").map(String.init)
    }

    static let source = #"""
import json, re, sys
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# Each Error.code has exactly one HTTP status (openapi.yaml, Error.code).
CODE_STATUS = {
    "bad_request": 400, "invalid_range": 400, "invalid_argument": 400, "read_only": 403,
    "forbidden": 403, "listing_refused": 403, "not_found": 404, "unknown_export": 404,
    "method_not_allowed": 405, "payload_too_large": 413, "range_not_satisfiable": 416,
    "too_many_ranges": 416, "request_header_too_large": 431, "internal_error": 500,
    "not_implemented": 501, "backend_unreachable": 502, "backend_error": 502, "bad_gateway": 502,
    "service_unavailable": 503, "not_ready": 503, "gateway_timeout": 504, "insufficient_storage": 507, "precondition_failed": 412, "digest_mismatch": 400,
}
BASE = "urn:nbd-gateway:openapi"

mode, spec_path, records_path = sys.argv[1], sys.argv[2], sys.argv[3]
spec = yaml.safe_load(open(spec_path))
registry = Registry().with_resource(BASE, Resource(contents=spec, specification=DRAFT202012))

def escape(token):
    return token.replace("~", "~0").replace("/", "~1")

def resolve(obj, pointer):
    # Follows local $refs; returns the object and its JSON pointer.
    while isinstance(obj, dict) and "$ref" in obj:
        ref = obj["$ref"]
        assert ref.startswith("#/"), ref
        pointer = ref[1:]
        obj = spec
        for token in ref[2:].split("/"):
            obj = obj[token.replace("~1", "/").replace("~0", "~")]
    return obj, pointer

def validate(instance, pointer):
    validator = Draft202012Validator({"$ref": BASE + "#" + pointer}, registry=registry)
    return ["%s at %s" % (e.message, "/".join(str(p) for p in e.absolute_path) or "(root)")
            for e in validator.iter_errors(instance)]

templates = []
for template in spec["paths"]:
    parts = re.split(r"(\{[a-z]+\})", template)
    pattern = "^" + "".join("([^/]*)" if part.startswith("{") else re.escape(part) for part in parts) + "$"
    templates.append((template, re.compile(pattern)))

if mode == "operations":
    for template, item in spec["paths"].items():
        for method in ("get", "head", "put", "post", "options", "delete", "patch"):
            if method in item:
                print(method.upper(), template)
    sys.exit(0)

problems = []
for number, line in enumerate(open(records_path)):
    if not line.strip():
        continue
    record = json.loads(line)
    method, path, status = record["method"], record["path"], record["status"]
    headers = record["headers"]
    body = record["body"]
    where = "%s %s -> %d" % (method, path, status)

    def header(name):
        for key, value in headers:
            if key.lower() == name.lower():
                return value
        return None

    def problem(text, number=number):
        problems.append((number, "%s: %s" % (where, text)))

    request_id = header("X-Request-Id")
    if request_id is None or not (1 <= len(request_id) <= 128):
        problem("missing or bad X-Request-Id header: %r" % request_id)
    content_type = (header("Content-Type") or "").split(";")[0].strip().lower()
    is_head = method == "HEAD"

    # The operation: path template, then method (HEAD falls back to GET, RFC 9110 9.3.2).
    template = next((t for t, regex in templates if regex.match(path)), None)
    operation = None
    if template is not None:
        item = spec["paths"][template]
        operation_method = method.lower()
        if operation_method not in item and operation_method == "head" and "get" in item:
            operation_method = "get"
        operation = item.get(operation_method)
        base_pointer = "/paths/%s/%s" % (escape(template), operation_method)

    if status >= 400:
        if content_type != "application/json":
            problem("error answer with Content-Type %r, not application/json" % header("Content-Type"))
        if not is_head:
            try:
                document = json.loads(body or "")
            except Exception as error:
                problem("error body is not JSON (%s): %r" % (error, (body or "")[:200]))
                document = None
            if document is not None:
                for message in validate(document, "/components/schemas/Error"):
                    problem("error body does not match Error: " + message)
                error = document.get("error") if isinstance(document, dict) else None
                if isinstance(error, dict):
                    if error.get("status") != status:
                        problem("error.status %r differs from the HTTP status" % error.get("status"))
                    if error.get("request_id") != request_id:
                        problem("error.request_id %r differs from X-Request-Id %r" % (error.get("request_id"), request_id))
                    code = error.get("code")
                    if code in CODE_STATUS and CODE_STATUS[code] != status:
                        problem("code %s belongs with %d" % (code, CODE_STATUS[code]))
                    if (error.get("nbd_error") is None) != (error.get("nbd_errno") is None):
                        problem("nbd_error and nbd_errno must be null together: %r / %r" % (error.get("nbd_error"), error.get("nbd_errno")))
                    if template is None and code != "not_found":
                        problem("unknown path answered with code %r, not not_found" % code)
                    if template is not None and operation is None and code != "method_not_allowed":
                        problem("undefined method answered with code %r, not method_not_allowed" % code)
        if status == 405 and not header("Allow"):
            problem("405 without an Allow header")
        if status == 416 and not re.match(r"^bytes \*/[0-9]+$", header("Content-Range") or ""):
            problem("416 without Content-Range: bytes */SIZE (got %r)" % header("Content-Range"))
        if status == 503 and not re.match(r"^[0-9]+$", header("Retry-After") or ""):
            problem("503 without a Retry-After")

    if template is None:
        if status != 404:
            problem("a path the contract does not define answered %d, not 404" % status)
        continue
    if operation is None:
        if status != 405:
            problem("a method the path does not define answered %d, not 405" % status)
        continue

    responses = operation["responses"]
    key = str(status) if str(status) in responses else ("default" if "default" in responses else None)
    if key is None:
        problem("status %d is not documented for the operation (and no default)" % status)
        continue
    if key == "default" and status < 400:
        problem("success status %d is not documented (only default)" % status)
    response, response_pointer = resolve(responses[key], base_pointer + "/responses/" + key)

    # Headers the response declares.
    for name, declared in (response.get("headers") or {}).items():
        declared, header_pointer = resolve(declared, response_pointer + "/headers/" + escape(name))
        value = header(name)
        if value is None:
            if declared.get("required"):
                problem("required header %s is missing" % name)
            continue
        if name == "Accept-Ranges" and not any(key == "Accept-Ranges" for key, _ in headers):
            problem("Accept-Ranges must be spelled exactly so")
        schema = declared.get("schema", {})
        instance = value
        if schema.get("type") == "integer":
            try:
                instance = int(value)
            except ValueError:
                problem("header %s is not an integer: %r" % (name, value))
                continue
        for message in validate(instance, header_pointer + "/schema"):
            problem("header %s=%r: %s" % (name, value, message))

    # Body and content type.
    content = response.get("content")
    if content and not is_head:
        if content_type not in content:
            problem("Content-Type %r is not one of %s" % (header("Content-Type"), sorted(content)))
        elif content_type == "application/json":
            try:
                document = json.loads(body or "")
            except Exception as error:
                problem("body is not JSON (%s)" % error)
                continue
            schema_pointer = response_pointer + "/content/application~1json/schema"
            for message in validate(document, schema_pointer):
                problem("body does not match its schema: " + message)
    elif not content and not is_head and record["body_length"] > 0:
        problem("the contract declares no body, got %d bytes" % record["body_length"])
    if is_head and record["body_length"] > 0:
        problem("HEAD answered with a body")
    if operation.get("operationId") == "getData" and status == 206:
        if content_type == "multipart/byteranges":
            if header("Content-Range") is not None:
                problem("multipart/byteranges with a top-level Content-Range")
        elif header("Content-Range") is None:
            problem("single-range 206 without Content-Range")

for number, text in problems:
    print("%d\t%s" % (number, text))
sys.exit(1 if problems else 0)
"""#
}
