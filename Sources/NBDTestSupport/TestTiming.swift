import Foundation

/// How much longer than usual a test may wait, in the run at hand.
///
/// `scripts/sanitize` runs every test with the sanitizer's instrumentation in the test process
/// and in every gateway and tool it starts (seen here: 2–10x slower under ThreadSanitizer with the
/// suites running side by side on two cores). Bounds that say "soon" (an answer within 10 s, a
/// shutdown within the grace period and 2 s) are stretched by this factor there, and only there;
/// a bound that must stay under some other delay (a reply held back 20 s) is capped below it.
public enum TestTiming {
    /// 1 in a normal run, 2 under AddressSanitizer, 4 under ThreadSanitizer.
    public static let scale: Int = {
        switch ProcessInfo.processInfo.environment["NBD_TESTS_SANITIZER"] {
        case "thread": 4
        case "address": 2
        default: 1
        }
    }()

    /// `duration` stretched by `scale`.
    public static func stretched(_ duration: Duration) -> Duration { duration * scale }
}
