// The client API speaks in NBDProtocol types (NBDError, NBDExportInfo, ...): re-export them.
@_exported import NBDProtocol
