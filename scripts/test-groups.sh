# Sourced by scripts/test and scripts/sanitize. The load, soak, browser and contract-fuzzing
# suites each use both cores for a while, and the shutdown suites time the gateway's exit to the
# second: they run one at a time after the rest, so that no test's time limit measures another's
# load. A swift test --filter / --skip pattern.
heavy='ReverseProxyTests|ContractFuzzTests|SoakTests|FaultTests|BrowserTests|ShutdownUnderLoadTests|ShutdownTests'
